#include <gtest/gtest.h>

#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "cleave/core/certificates.h"
#include "cleave/core/error.h"
#include "cleave/core/file_io.h"
#include "test_temp_dir.h"

namespace cleave {
namespace {

X509* Parse(const std::string& pem) {
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  X509* certificate = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  return certificate;
}

std::vector<std::string> SubjectAltNames(const std::string& pem) {
  X509* certificate = Parse(pem);
  std::vector<std::string> out;
  auto* names = static_cast<GENERAL_NAMES*>(
      X509_get_ext_d2i(certificate, NID_subject_alt_name, nullptr, nullptr));
  for (int i = 0; names != nullptr && i < sk_GENERAL_NAME_num(names); ++i) {
    const GENERAL_NAME* name = sk_GENERAL_NAME_value(names, i);
    if (name->type == GEN_DNS) {
      out.push_back("DNS:" + std::string(reinterpret_cast<const char*>(
                                             ASN1_STRING_get0_data(name->d.dNSName))));
    } else if (name->type == GEN_IPADD) {
      out.push_back("IP:" + std::to_string(ASN1_STRING_length(name->d.iPAddress)) + "bytes");
    }
  }
  GENERAL_NAMES_free(names);
  X509_free(certificate);
  return out;
}

uint32_t ExtendedKeyUsage(const std::string& pem) {
  X509* certificate = Parse(pem);
  const uint32_t usage = X509_get_extended_key_usage(certificate);
  X509_free(certificate);
  return usage;
}

class CertificatesTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ca_ = new PemPair(CreateCertificateAuthority("test CA"));
    other_ca_ = new PemPair(CreateCertificateAuthority("other CA"));
  }
  static PemPair* ca_;
  static PemPair* other_ca_;
};
PemPair* CertificatesTest::ca_ = nullptr;
PemPair* CertificatesTest::other_ca_ = nullptr;

TEST_F(CertificatesTest, ClientCertificateCarriesTheHospitalName) {
  const PemPair client = IssueClientCertificate(*ca_, "st-mary");
  EXPECT_EQ(CertificateCommonName(client.certificate_pem), "st-mary");
  EXPECT_TRUE(VerifyCertificateChain(ca_->certificate_pem, client.certificate_pem));
  EXPECT_FALSE(VerifyCertificateChain(other_ca_->certificate_pem, client.certificate_pem));
  EXPECT_EQ(ExtendedKeyUsage(client.certificate_pem), XKU_SSL_CLIENT);
  EXPECT_NE(client.private_key_pem.find("PRIVATE KEY"), std::string::npos);
}

TEST_F(CertificatesTest, ServerCertificateHasLoopbackAndGivenNames) {
  const PemPair server =
      IssueServerCertificate(*ca_, "cleave-server", {"split.example.org", "10.1.2.3"});
  EXPECT_TRUE(VerifyCertificateChain(ca_->certificate_pem, server.certificate_pem));
  EXPECT_EQ(ExtendedKeyUsage(server.certificate_pem), XKU_SSL_SERVER);
  const auto names = SubjectAltNames(server.certificate_pem);
  const std::vector<std::string> expected = {"DNS:localhost", "IP:4bytes", "IP:16bytes",
                                             "DNS:split.example.org", "IP:4bytes"};
  EXPECT_EQ(names, expected);
}

TEST_F(CertificatesTest, TheCaIsACa) {
  EXPECT_TRUE(VerifyCertificateChain(ca_->certificate_pem, ca_->certificate_pem));
  const PemPair client = IssueClientCertificate(*ca_, "a");
  // A leaf cannot sign: a certificate "issued" by a client key does not verify.
  EXPECT_THROW(IssueClientCertificate({client.certificate_pem, "not a key"}, "b"), UserError);
}

TEST_F(CertificatesTest, BadNamesAreRefused) {
  EXPECT_THROW(IssueClientCertificate(*ca_, ""), UserError);
  EXPECT_THROW(IssueClientCertificate(*ca_, "st mary"), UserError);
  EXPECT_THROW(IssueClientCertificate(*ca_, "a/b"), UserError);
  EXPECT_THROW(IssueClientCertificate(*ca_, std::string(65, 'a')), UserError);
}

TEST_F(CertificatesTest, LoadTlsFilesChecksEveryFile) {
  testing::TempDir dir;
  const PemPair client = IssueClientCertificate(*ca_, "st-mary");
  const PemPair other = IssueClientCertificate(*ca_, "riverside");
  const PemPair foreign = IssueClientCertificate(*other_ca_, "st-mary");
  WriteFileAtomic(dir.File("ca.crt"), ca_->certificate_pem);
  WriteFileAtomic(dir.File("c.crt"), client.certificate_pem);
  WriteFileAtomic(dir.File("c.key"), client.private_key_pem, 0600);
  WriteFileAtomic(dir.File("other.key"), other.private_key_pem, 0600);
  WriteFileAtomic(dir.File("foreign.crt"), foreign.certificate_pem);
  WriteFileAtomic(dir.File("foreign.key"), foreign.private_key_pem, 0600);
  WriteFileAtomic(dir.File("junk"), "hello");

  const TlsFiles files = LoadTlsFiles(dir.File("ca.crt"), dir.File("c.crt"), dir.File("c.key"));
  EXPECT_EQ(files.certificate_pem, client.certificate_pem);

  auto expect_error_naming = [](const std::function<void()>& load, const std::string& name) {
    try {
      load();
      FAIL() << "accepted";
    } catch (const UserError& error) {
      EXPECT_NE(std::string(error.what()).find(name), std::string::npos) << error.what();
    }
  };
  expect_error_naming([&] { LoadTlsFiles(dir.File("missing"), dir.File("c.crt"), dir.File("c.key")); },
                      dir.File("missing"));
  expect_error_naming([&] { LoadTlsFiles(dir.File("ca.crt"), dir.File("junk"), dir.File("c.key")); },
                      dir.File("junk"));
  expect_error_naming([&] { LoadTlsFiles(dir.File("ca.crt"), dir.File("c.crt"), dir.File("junk")); },
                      dir.File("junk"));
  expect_error_naming(
      [&] { LoadTlsFiles(dir.File("ca.crt"), dir.File("c.crt"), dir.File("other.key")); },
      dir.File("other.key"));
  expect_error_naming(
      [&] { LoadTlsFiles(dir.File("ca.crt"), dir.File("foreign.crt"), dir.File("foreign.key")); },
      dir.File("foreign.crt"));
}

}  // namespace
}  // namespace cleave
