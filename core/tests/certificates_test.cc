#include "cleave/core/certificates.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "cleave/core/error.h"
#include "cleave/core/file_io.h"
#include "cleave/test_support/temp_dir.h"

namespace cleave {
namespace {

// The assertions below read certificates with the X509 API directly, independently of the
// library's own parsing.
struct X509Free {
  void operator()(X509* certificate) const { X509_free(certificate); }
};
using X509Ptr = std::unique_ptr<X509, X509Free>;

X509Ptr Parse(const std::string& pem) {
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  X509Ptr certificate(PEM_read_bio_X509(bio, nullptr, nullptr, nullptr));
  BIO_free(bio);
  if (certificate == nullptr) throw std::runtime_error("test could not parse a certificate");
  return certificate;
}

std::string NameEntry(const X509_NAME* name, int nid) {
  const int index = X509_NAME_get_index_by_NID(name, nid, -1);
  if (index < 0) return "<none>";
  const ASN1_STRING* data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, index));
  return std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(data)),
                     static_cast<size_t>(ASN1_STRING_length(data)));
}

std::string SubjectCommonName(const std::string& pem) {
  return NameEntry(X509_get_subject_name(Parse(pem).get()), NID_commonName);
}

std::vector<std::string> SubjectAltNames(const std::string& pem) {
  const X509Ptr certificate = Parse(pem);
  std::vector<std::string> out;
  auto* names = static_cast<GENERAL_NAMES*>(
      X509_get_ext_d2i(certificate.get(), NID_subject_alt_name, nullptr, nullptr));
  for (int i = 0; names != nullptr && i < sk_GENERAL_NAME_num(names); ++i) {
    const GENERAL_NAME* name = sk_GENERAL_NAME_value(names, i);
    if (name->type == GEN_DNS) {
      const ASN1_STRING* dns = name->d.dNSName;
      out.push_back("DNS:" + std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(dns)),
                                         static_cast<size_t>(ASN1_STRING_length(dns))));
    } else if (name->type == GEN_IPADD) {
      const int length = ASN1_STRING_length(name->d.iPAddress);
      char text[INET6_ADDRSTRLEN] = {0};
      inet_ntop(length == 4 ? AF_INET : AF_INET6, ASN1_STRING_get0_data(name->d.iPAddress), text,
                sizeof(text));
      out.push_back("IP:" + std::string(text));
    } else {
      out.push_back("other");
    }
  }
  GENERAL_NAMES_free(names);
  return out;
}

std::string KeyGroup(const std::string& pem) {
  const X509Ptr certificate = Parse(pem);
  char group[64] = {0};
  size_t length = 0;
  if (EVP_PKEY_get_group_name(X509_get0_pubkey(certificate.get()), group, sizeof(group), &length) !=
      1) {
    return "<not EC>";
  }
  return std::string(group, length);
}

std::unique_ptr<BIGNUM, decltype(&BN_free)> Serial(const std::string& pem) {
  return {ASN1_INTEGER_to_BN(X509_get0_serialNumber(Parse(pem).get()), nullptr), &BN_free};
}

// The same key as `key_pem`, as PKCS#8 encrypted with a passphrase.
std::string EncryptedKey(const std::string& key_pem) {
  BIO* in = BIO_new_mem_buf(key_pem.data(), static_cast<int>(key_pem.size()));
  EVP_PKEY* key = PEM_read_bio_PrivateKey(in, nullptr, nullptr, nullptr);
  BIO* out = BIO_new(BIO_s_mem());
  char passphrase[] = "secret";
  PEM_write_bio_PKCS8PrivateKey(out, key, EVP_aes_256_cbc(), nullptr, 0, nullptr, passphrase);
  char* data = nullptr;
  const long size = BIO_get_mem_data(out, &data);
  std::string pem(data, static_cast<size_t>(size));
  BIO_free(out);
  EVP_PKEY_free(key);
  BIO_free(in);
  return pem;
}

class CertificatesTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ca_ = new PemPair(CreateCertificateAuthority("test CA"));
    other_ca_ = new PemPair(CreateCertificateAuthority("other CA"));
  }
  static void TearDownTestSuite() {
    delete ca_;
    delete other_ca_;
  }
  static PemPair* ca_;
  static PemPair* other_ca_;
};
PemPair* CertificatesTest::ca_ = nullptr;
PemPair* CertificatesTest::other_ca_ = nullptr;

TEST_F(CertificatesTest, ClientCertificateCarriesTheHospitalName) {
  const PemPair client = IssueClientCertificate(*ca_, "st-mary");
  EXPECT_EQ(SubjectCommonName(client.certificate_pem), "st-mary");
  EXPECT_EQ(CertificateCommonName(client.certificate_pem), "st-mary");
  EXPECT_TRUE(SubjectAltNames(client.certificate_pem).empty());
  EXPECT_NE(client.private_key_pem.find("-----BEGIN PRIVATE KEY-----"), std::string::npos);

  const X509Ptr certificate = Parse(client.certificate_pem);
  EXPECT_EQ(X509_get_extended_key_usage(certificate.get()), static_cast<uint32_t>(XKU_SSL_CLIENT));
  EXPECT_EQ(X509_get_key_usage(certificate.get()), static_cast<uint32_t>(KU_DIGITAL_SIGNATURE));
  EXPECT_EQ(X509_check_ca(certificate.get()), 0);
}

TEST_F(CertificatesTest, ClientCertificateVerifiesOnlyAgainstItsCa) {
  const PemPair client = IssueClientCertificate(*ca_, "st-mary");
  const PemPair server = IssueServerCertificate(*ca_, "cleave-server", {});
  EXPECT_TRUE(VerifyCertificateChain(ca_->certificate_pem, client.certificate_pem));
  EXPECT_FALSE(VerifyCertificateChain(other_ca_->certificate_pem, client.certificate_pem));
  EXPECT_FALSE(VerifyCertificateChain(server.certificate_pem, client.certificate_pem));
  EXPECT_FALSE(VerifyCertificateChain("not PEM", client.certificate_pem));
  EXPECT_FALSE(VerifyCertificateChain(ca_->certificate_pem, "not PEM"));
}

TEST_F(CertificatesTest, ServerCertificateHasLoopbackAndGivenNames) {
  const PemPair server =
      IssueServerCertificate(*ca_, "cleave-server", {"split.example.org", "10.1.2.3", "fd00::7"});
  EXPECT_TRUE(VerifyCertificateChain(ca_->certificate_pem, server.certificate_pem));
  EXPECT_EQ(SubjectCommonName(server.certificate_pem), "cleave-server");
  const std::vector<std::string> expected = {"DNS:localhost",         "IP:127.0.0.1", "IP:::1",
                                             "DNS:split.example.org", "IP:10.1.2.3",  "IP:fd00::7"};
  EXPECT_EQ(SubjectAltNames(server.certificate_pem), expected);

  const X509Ptr certificate = Parse(server.certificate_pem);
  EXPECT_EQ(X509_get_extended_key_usage(certificate.get()), static_cast<uint32_t>(XKU_SSL_SERVER));
  EXPECT_EQ(X509_get_key_usage(certificate.get()),
            static_cast<uint32_t>(KU_DIGITAL_SIGNATURE | KU_KEY_ENCIPHERMENT));
  EXPECT_EQ(X509_check_ca(certificate.get()), 0);
}

TEST_F(CertificatesTest, TheCaIsASelfSignedCa) {
  EXPECT_TRUE(VerifyCertificateChain(ca_->certificate_pem, ca_->certificate_pem));
  const X509Ptr ca = Parse(ca_->certificate_pem);
  EXPECT_EQ(SubjectCommonName(ca_->certificate_pem), "test CA");
  EXPECT_EQ(X509_NAME_cmp(X509_get_subject_name(ca.get()), X509_get_issuer_name(ca.get())), 0);
  EXPECT_EQ(X509_check_ca(ca.get()), 1);
  EXPECT_EQ(X509_get_key_usage(ca.get()), static_cast<uint32_t>(KU_KEY_CERT_SIGN | KU_CRL_SIGN));
}

TEST_F(CertificatesTest, LeavesNameTheirIssuerAndItsKey) {
  const PemPair client = IssueClientCertificate(*ca_, "st-mary");
  const X509Ptr ca = Parse(ca_->certificate_pem);
  const X509Ptr leaf = Parse(client.certificate_pem);
  EXPECT_EQ(X509_NAME_cmp(X509_get_issuer_name(leaf.get()), X509_get_subject_name(ca.get())), 0);
  ASSERT_NE(X509_get0_authority_key_id(leaf.get()), nullptr);
  ASSERT_NE(X509_get0_subject_key_id(ca.get()), nullptr);
  EXPECT_EQ(ASN1_OCTET_STRING_cmp(X509_get0_authority_key_id(leaf.get()),
                                  X509_get0_subject_key_id(ca.get())),
            0);
  EXPECT_NE(X509_get0_subject_key_id(leaf.get()), nullptr);
}

TEST_F(CertificatesTest, KeysSignaturesAndSerials) {
  const PemPair first = IssueClientCertificate(*ca_, "a");
  const PemPair second = IssueClientCertificate(*ca_, "a");
  for (const std::string& pem :
       {ca_->certificate_pem, first.certificate_pem, second.certificate_pem}) {
    EXPECT_EQ(KeyGroup(pem), "prime256v1");
    EXPECT_EQ(X509_get_signature_nid(Parse(pem).get()), NID_ecdsa_with_SHA256);
    EXPECT_EQ(X509_get_version(Parse(pem).get()), 2);  // v3
  }
  const auto serial_one = Serial(first.certificate_pem);
  const auto serial_two = Serial(second.certificate_pem);
  // 127 random bits: fewer than 65 significant bits happens with probability 2^-63.
  EXPECT_GT(BN_num_bits(serial_one.get()), 64);
  EXPECT_FALSE(BN_is_negative(serial_one.get()));
  EXPECT_NE(BN_cmp(serial_one.get(), serial_two.get()), 0);
  EXPECT_NE(first.private_key_pem, second.private_key_pem);
}

TEST_F(CertificatesTest, ValidityCoversNowAndTheRequestedDays) {
  const PemPair client = IssueClientCertificate(*ca_, "a", 30);
  const X509Ptr certificate = Parse(client.certificate_pem);
  EXPECT_LT(X509_cmp_current_time(X509_get0_notBefore(certificate.get())), 0);
  EXPECT_GT(X509_cmp_current_time(X509_get0_notAfter(certificate.get())), 0);
  int days = 0, seconds = 0;
  ASSERT_EQ(ASN1_TIME_diff(&days, &seconds, X509_get0_notBefore(certificate.get()),
                           X509_get0_notAfter(certificate.get())),
            1);
  EXPECT_EQ(days, 30);
  EXPECT_EQ(seconds, 3600);  // notBefore is an hour back, for clock skew
  EXPECT_THROW(IssueClientCertificate(*ca_, "a", 0), UserError);
  EXPECT_THROW(CreateCertificateAuthority("x", -1), UserError);
}

TEST_F(CertificatesTest, OnlyAMatchingCaPairCanIssue) {
  const PemPair client = IssueClientCertificate(*ca_, "a");
  // A leaf's key matches its certificate, but nothing would verify against a CA:FALSE issuer.
  EXPECT_THROW(IssueClientCertificate(client, "b"), UserError);
  EXPECT_THROW(IssueServerCertificate(client, "b", {}), UserError);
  EXPECT_THROW(IssueClientCertificate({ca_->certificate_pem, other_ca_->private_key_pem}, "b"),
               UserError);
  EXPECT_THROW(IssueClientCertificate({ca_->certificate_pem, "not a key"}, "b"), UserError);
  EXPECT_THROW(IssueClientCertificate({"not a certificate", ca_->private_key_pem}, "b"), UserError);
  EXPECT_THROW(CreateCertificateAuthority(""), UserError);
  EXPECT_THROW(CreateCertificateAuthority(std::string(65, 'c')), UserError);
}

class ClientNameTest : public CertificatesTest,
                       public ::testing::WithParamInterface<std::string> {};

TEST_P(ClientNameTest, BadNamesAreRefusedWithTheName) {
  try {
    IssueClientCertificate(*ca_, GetParam());
    FAIL() << "accepted '" << GetParam() << "'";
  } catch (const UserError& error) {
    EXPECT_NE(std::string(error.what()).find("'" + GetParam() + "'"), std::string::npos)
        << error.what();
  }
  EXPECT_THROW(IssueServerCertificate(*ca_, "cleave-server", {GetParam()}), UserError);
}

INSTANTIATE_TEST_SUITE_P(Names, ClientNameTest,
                         ::testing::Values("", "st mary", "a/b", "../ca", ".hidden", "-flag",
                                           "naïve", "a\nb", std::string(65, 'a')));

TEST_F(CertificatesTest, GoodNamesAreAccepted) {
  for (const std::string& name :
       std::vector<std::string>{"a", "St.Mary_2-north", "0clinic", std::string(64, 'z')}) {
    EXPECT_EQ(SubjectCommonName(IssueClientCertificate(*ca_, name).certificate_pem), name);
  }
}

TEST_F(CertificatesTest, LoadTlsFilesChecksEveryFile) {
  test_support::TempDir dir;
  const PemPair client = IssueClientCertificate(*ca_, "st-mary");
  const PemPair other = IssueClientCertificate(*ca_, "riverside");
  const PemPair foreign = IssueClientCertificate(*other_ca_, "st-mary");
  WriteFileAtomic(dir.File("ca.crt"), ca_->certificate_pem);
  WriteFileAtomic(dir.File("c.crt"), client.certificate_pem);
  WriteFileAtomic(dir.File("c.key"), client.private_key_pem, 0600);
  WriteFileAtomic(dir.File("other.key"), other.private_key_pem, 0600);
  WriteFileAtomic(dir.File("encrypted.key"), EncryptedKey(client.private_key_pem), 0600);
  WriteFileAtomic(dir.File("foreign.crt"), foreign.certificate_pem);
  WriteFileAtomic(dir.File("foreign.key"), foreign.private_key_pem, 0600);
  WriteFileAtomic(dir.File("junk"), "hello");

  const TlsFiles files = LoadTlsFiles(dir.File("ca.crt"), dir.File("c.crt"), dir.File("c.key"));
  EXPECT_EQ(files.ca_pem, ca_->certificate_pem);
  EXPECT_EQ(files.certificate_pem, client.certificate_pem);
  EXPECT_EQ(files.private_key_pem, client.private_key_pem);

  // Each failure is one line that names the offending file and says what is wrong with it.
  auto expect_error = [](const std::function<void()>& load, const std::string& text) {
    try {
      load();
      ADD_FAILURE() << "accepted; expected: " << text;
    } catch (const UserError& error) {
      const std::string message = error.what();
      EXPECT_NE(message.find(text), std::string::npos) << message;
      EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    }
  };
  const auto ca = dir.File("ca.crt"), crt = dir.File("c.crt"), key = dir.File("c.key");
  const auto junk = dir.File("junk");
  expect_error([&] { LoadTlsFiles(dir.File("missing"), crt, key); },
               "cannot read CA certificate '" + dir.File("missing") + "'");
  expect_error([&] { LoadTlsFiles(ca, dir.File("missing"), key); },
               "'" + dir.File("missing") + "'");
  expect_error([&] { LoadTlsFiles(ca, crt, dir.File("missing")); },
               "'" + dir.File("missing") + "'");
  expect_error([&] { LoadTlsFiles(junk, crt, key); },
               "CA certificate '" + junk + "' is not a PEM certificate");
  expect_error([&] { LoadTlsFiles(ca, junk, key); },
               "certificate '" + junk + "' is not a PEM certificate");
  expect_error([&] { LoadTlsFiles(ca, key, key); },
               "certificate '" + key + "' is not a PEM certificate");
  expect_error([&] { LoadTlsFiles(ca, crt, junk); },
               "private key '" + junk + "' is not a PEM private key");
  expect_error([&] { LoadTlsFiles(ca, crt, crt); },
               "private key '" + crt + "' is not a PEM private key");
  expect_error([&] { LoadTlsFiles(ca, crt, dir.File("encrypted.key")); },
               "private key '" + dir.File("encrypted.key") + "' is encrypted");
  expect_error(
      [&] { LoadTlsFiles(ca, crt, dir.File("other.key")); },
      "private key '" + dir.File("other.key") + "' does not belong to certificate '" + crt + "'");
  expect_error(
      [&] { LoadTlsFiles(ca, dir.File("foreign.crt"), dir.File("foreign.key")); },
      "certificate '" + dir.File("foreign.crt") + "' is not signed by the CA in '" + ca + "'");
}

}  // namespace
}  // namespace cleave
