#include "cleave/core/certificates.h"

#include <arpa/inet.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <memory>

#include "cleave/core/error.h"
#include "cleave/core/file_io.h"

namespace cleave {

namespace {

template <typename T, void (*Free)(T*)>
struct Deleter {
  void operator()(T* p) const { Free(p); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, Deleter<EVP_PKEY, EVP_PKEY_free>>;
using X509Ptr = std::unique_ptr<X509, Deleter<X509, X509_free>>;
using BioPtr = std::unique_ptr<BIO, Deleter<BIO, BIO_free_all>>;
using ExtPtr = std::unique_ptr<X509_EXTENSION, Deleter<X509_EXTENSION, X509_EXTENSION_free>>;
using StorePtr = std::unique_ptr<X509_STORE, Deleter<X509_STORE, X509_STORE_free>>;
using StoreCtxPtr = std::unique_ptr<X509_STORE_CTX, Deleter<X509_STORE_CTX, X509_STORE_CTX_free>>;

// The OpenSSL error queue as text (and cleared), for messages.
std::string OpenSslErrors() {
  std::string text;
  unsigned long code;
  while ((code = ERR_get_error()) != 0) {
    char buffer[256];
    ERR_error_string_n(code, buffer, sizeof(buffer));
    if (!text.empty()) text += "; ";
    text += buffer;
  }
  return text.empty() ? "unknown OpenSSL error" : text;
}

#define CLEAVE_OPENSSL_CHECK(call)                                              \
  do {                                                                          \
    if (!(call)) throw Error(std::string(#call " failed: ") + OpenSslErrors()); \
  } while (0)

PkeyPtr NewEcKey() {
  PkeyPtr key(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  CLEAVE_OPENSSL_CHECK(key != nullptr);
  return key;
}

BioPtr NewMemoryBio() {
  BioPtr bio(BIO_new(BIO_s_mem()));
  CLEAVE_OPENSSL_CHECK(bio != nullptr);
  return bio;
}

std::string ContentsOf(BIO* bio) {
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio, &data);
  CLEAVE_OPENSSL_CHECK(size > 0 && data != nullptr);
  return std::string(data, static_cast<size_t>(size));
}

std::string PemOfKey(EVP_PKEY* key) {
  BioPtr bio = NewMemoryBio();
  CLEAVE_OPENSSL_CHECK(
      PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) == 1);
  return ContentsOf(bio.get());
}

std::string PemOfCertificate(X509* certificate) {
  BioPtr bio = NewMemoryBio();
  CLEAVE_OPENSSL_CHECK(PEM_write_bio_X509(bio.get(), certificate) == 1);
  return ContentsOf(bio.get());
}

// A read-only BIO over `pem`; PEM files are small, anything past INT_MAX is not one.
BioPtr ReadOnlyBio(const std::string& pem) {
  CLEAVE_CHECK_USER(pem.size() < (1u << 30), "PEM text of ", pem.size(), " bytes is too large");
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  CLEAVE_OPENSSL_CHECK(bio != nullptr);
  return bio;
}

// Null (and the error queue cleared) when `pem` holds no certificate: callers word the error.
X509Ptr ParseCertificate(const std::string& pem) {
  BioPtr bio = ReadOnlyBio(pem);
  X509Ptr certificate(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  ERR_clear_error();
  return certificate;
}

// Refuses every passphrase: without this OpenSSL would prompt on the terminal for an encrypted
// key, and a server must not hang waiting for one.
int NoPassphrase(char* /*buffer*/, int /*size*/, int /*rwflag*/, void* /*user*/) { return -1; }

PkeyPtr ParseKey(const std::string& pem) {
  BioPtr bio = ReadOnlyBio(pem);
  PkeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, NoPassphrase, nullptr));
  ERR_clear_error();
  return key;
}

bool IsEncryptedPem(const std::string& pem) {
  return pem.find("-----BEGIN ENCRYPTED PRIVATE KEY-----") != std::string::npos ||
         pem.find("Proc-Type: 4,ENCRYPTED") != std::string::npos;
}

void AddExtension(X509* certificate, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX context;
  X509V3_set_ctx_nodb(&context);
  X509V3_set_ctx(&context, issuer, certificate, nullptr, nullptr, 0);
  ExtPtr extension(X509V3_EXT_conf_nid(nullptr, &context, nid, value.c_str()));
  CLEAVE_OPENSSL_CHECK(extension != nullptr);
  CLEAVE_OPENSSL_CHECK(X509_add_ext(certificate, extension.get(), -1) == 1);
}

// A certificate for `key` named `common_name`, issued by `issuer` (itself when null), not yet
// signed and without usage extensions.
X509Ptr NewCertificate(EVP_PKEY* key, const std::string& common_name, X509* issuer,
                       int valid_days) {
  CLEAVE_CHECK_USER(valid_days >= 1, "certificate validity must be at least 1 day");
  X509Ptr certificate(X509_new());
  CLEAVE_OPENSSL_CHECK(certificate != nullptr);
  CLEAVE_OPENSSL_CHECK(X509_set_version(certificate.get(), 2) == 1);  // v3
  unsigned char serial_bytes[16];
  CLEAVE_OPENSSL_CHECK(RAND_bytes(serial_bytes, sizeof(serial_bytes)) == 1);
  serial_bytes[0] &= 0x7f;  // positive
  std::unique_ptr<BIGNUM, Deleter<BIGNUM, BN_free>> serial(
      BN_bin2bn(serial_bytes, sizeof(serial_bytes), nullptr));
  CLEAVE_OPENSSL_CHECK(serial != nullptr);
  CLEAVE_OPENSSL_CHECK(BN_to_ASN1_INTEGER(serial.get(), X509_get_serialNumber(certificate.get())));
  CLEAVE_OPENSSL_CHECK(X509_gmtime_adj(X509_getm_notBefore(certificate.get()), -3600));
  CLEAVE_OPENSSL_CHECK(X509_gmtime_adj(X509_getm_notAfter(certificate.get()), 86400L * valid_days));
  CLEAVE_OPENSSL_CHECK(X509_set_pubkey(certificate.get(), key) == 1);
  X509_NAME* name = X509_get_subject_name(certificate.get());
  CLEAVE_OPENSSL_CHECK(X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8,
                                                  reinterpret_cast<const unsigned char*>("cleave"),
                                                  -1, -1, 0) == 1);
  CLEAVE_OPENSSL_CHECK(
      X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(common_name.c_str()), -1,
                                 -1, 0) == 1);
  X509* effective_issuer = issuer != nullptr ? issuer : certificate.get();
  CLEAVE_OPENSSL_CHECK(
      X509_set_issuer_name(certificate.get(), X509_get_subject_name(effective_issuer)) == 1);
  AddExtension(certificate.get(), effective_issuer, NID_subject_key_identifier, "hash");
  AddExtension(certificate.get(), effective_issuer, NID_authority_key_identifier, "keyid:always");
  return certificate;
}

struct LoadedCa {
  X509Ptr certificate;
  PkeyPtr key;
};

LoadedCa LoadCa(const PemPair& ca) {
  LoadedCa loaded{ParseCertificate(ca.certificate_pem), ParseKey(ca.private_key_pem)};
  CLEAVE_CHECK_USER(loaded.certificate != nullptr, "the CA certificate is not valid PEM");
  CLEAVE_CHECK_USER(loaded.key != nullptr, "the CA private key is not valid PEM");
  const bool matches = X509_check_private_key(loaded.certificate.get(), loaded.key.get()) == 1;
  ERR_clear_error();
  CLEAVE_CHECK_USER(matches, "the CA private key does not match the CA certificate");
  // A leaf (basicConstraints CA:FALSE) could sign, but nothing would ever verify against it.
  CLEAVE_CHECK_USER(X509_check_ca(loaded.certificate.get()) != 0,
                    "the CA certificate is not a certificate authority (CA:FALSE)");
  return loaded;
}

bool LooksLikeIp(const std::string& name) {
  unsigned char buffer[16];
  return inet_pton(AF_INET, name.c_str(), buffer) == 1 ||
         inet_pton(AF_INET6, name.c_str(), buffer) == 1;
}

bool IsAlphanumeric(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

// Names become CNs, DNS SANs and (for clients) file names, so keep them to a portable set that
// cannot look like a flag or a path.
void CheckName(const std::string& name, const char* what) {
  CLEAVE_CHECK_USER(!name.empty() && name.size() <= 64, what, " name '", name,
                    "' must be 1..64 characters");
  CLEAVE_CHECK_USER(IsAlphanumeric(name.front()), what, " name '", name,
                    "' must start with a letter or digit");
  for (char c : name) {
    CLEAVE_CHECK_USER(IsAlphanumeric(c) || c == '.' || c == '_' || c == '-', what, " name '", name,
                      "' may only contain letters, digits, '.', '_' and '-'");
  }
}

PemPair Sign(X509* certificate, EVP_PKEY* key, EVP_PKEY* signer) {
  CLEAVE_OPENSSL_CHECK(X509_sign(certificate, signer, EVP_sha256()) > 0);
  return {PemOfCertificate(certificate), PemOfKey(key)};
}

}  // namespace

PemPair CreateCertificateAuthority(const std::string& common_name, int valid_days) {
  // 64 is the X.520 upper bound on a CN; OpenSSL refuses longer ones with a less clear error.
  CLEAVE_CHECK_USER(!common_name.empty() && common_name.size() <= 64, "CA name '", common_name,
                    "' must be 1..64 characters");
  PkeyPtr key = NewEcKey();
  X509Ptr certificate = NewCertificate(key.get(), common_name, nullptr, valid_days);
  AddExtension(certificate.get(), certificate.get(), NID_basic_constraints, "critical,CA:TRUE");
  AddExtension(certificate.get(), certificate.get(), NID_key_usage, "critical,keyCertSign,cRLSign");
  return Sign(certificate.get(), key.get(), key.get());
}

PemPair IssueServerCertificate(const PemPair& ca, const std::string& common_name,
                               const std::vector<std::string>& extra_names, int valid_days) {
  CheckName(common_name, "server");
  const LoadedCa issuer = LoadCa(ca);
  PkeyPtr key = NewEcKey();
  X509Ptr certificate =
      NewCertificate(key.get(), common_name, issuer.certificate.get(), valid_days);
  std::string sans = "DNS:localhost,IP:127.0.0.1,IP:::1";
  for (const std::string& name : extra_names) {
    if (LooksLikeIp(name)) {
      sans += ",IP:" + name;
    } else {
      CheckName(name, "server");
      sans += ",DNS:" + name;
    }
  }
  AddExtension(certificate.get(), issuer.certificate.get(), NID_basic_constraints,
               "critical,CA:FALSE");
  AddExtension(certificate.get(), issuer.certificate.get(), NID_key_usage,
               "critical,digitalSignature,keyEncipherment");
  AddExtension(certificate.get(), issuer.certificate.get(), NID_ext_key_usage, "serverAuth");
  AddExtension(certificate.get(), issuer.certificate.get(), NID_subject_alt_name, sans);
  return Sign(certificate.get(), key.get(), issuer.key.get());
}

PemPair IssueClientCertificate(const PemPair& ca, const std::string& client_name, int valid_days) {
  CheckName(client_name, "client");
  const LoadedCa issuer = LoadCa(ca);
  PkeyPtr key = NewEcKey();
  X509Ptr certificate =
      NewCertificate(key.get(), client_name, issuer.certificate.get(), valid_days);
  AddExtension(certificate.get(), issuer.certificate.get(), NID_basic_constraints,
               "critical,CA:FALSE");
  AddExtension(certificate.get(), issuer.certificate.get(), NID_key_usage,
               "critical,digitalSignature");
  AddExtension(certificate.get(), issuer.certificate.get(), NID_ext_key_usage, "clientAuth");
  return Sign(certificate.get(), key.get(), issuer.key.get());
}

std::string CertificateCommonName(const std::string& certificate_pem) {
  X509Ptr certificate = ParseCertificate(certificate_pem);
  CLEAVE_CHECK_INPUT(certificate != nullptr, "not a PEM certificate");
  char buffer[256] = {0};
  const int size = X509_NAME_get_text_by_NID(X509_get_subject_name(certificate.get()),
                                             NID_commonName, buffer, sizeof(buffer));
  CLEAVE_CHECK_INPUT(size > 0, "certificate has no common name");
  return std::string(buffer, static_cast<size_t>(size));
}

bool VerifyCertificateChain(const std::string& ca_pem, const std::string& certificate_pem) {
  X509Ptr ca = ParseCertificate(ca_pem);
  X509Ptr certificate = ParseCertificate(certificate_pem);
  if (!ca || !certificate) return false;
  StorePtr store(X509_STORE_new());
  StoreCtxPtr context(X509_STORE_CTX_new());
  if (!store || !context || X509_STORE_add_cert(store.get(), ca.get()) != 1 ||
      X509_STORE_CTX_init(context.get(), store.get(), certificate.get(), nullptr) != 1) {
    ERR_clear_error();
    return false;
  }
  const bool ok = X509_verify_cert(context.get()) == 1;
  ERR_clear_error();
  return ok;
}

TlsFiles LoadTlsFiles(const std::string& ca_path, const std::string& cert_path,
                      const std::string& key_path) {
  TlsFiles files{ReadFile(ca_path, "CA certificate"), ReadFile(cert_path, "certificate"),
                 ReadFile(key_path, "private key")};
  CLEAVE_CHECK_USER(ParseCertificate(files.ca_pem) != nullptr, "CA certificate '", ca_path,
                    "' is not a PEM certificate");
  X509Ptr certificate = ParseCertificate(files.certificate_pem);
  CLEAVE_CHECK_USER(certificate != nullptr, "certificate '", cert_path,
                    "' is not a PEM certificate");
  CLEAVE_CHECK_USER(!IsEncryptedPem(files.private_key_pem), "private key '", key_path,
                    "' is encrypted; cleave needs an unencrypted key (keep it mode 0600)");
  PkeyPtr key = ParseKey(files.private_key_pem);
  CLEAVE_CHECK_USER(key != nullptr, "private key '", key_path, "' is not a PEM private key");
  const bool matches = X509_check_private_key(certificate.get(), key.get()) == 1;
  ERR_clear_error();
  CLEAVE_CHECK_USER(matches, "private key '", key_path, "' does not belong to certificate '",
                    cert_path, "'");
  CLEAVE_CHECK_USER(VerifyCertificateChain(files.ca_pem, files.certificate_pem), "certificate '",
                    cert_path, "' is not signed by the CA in '", ca_path, "'");
  return files;
}

}  // namespace cleave
