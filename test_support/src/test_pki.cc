#include "cleave/test_support/test_pki.h"

namespace cleave::test_support {

TlsFiles TestPki::ServerFiles() const {
  return {ca.certificate_pem, server.certificate_pem, server.private_key_pem};
}

TlsFiles TestPki::ClientFiles(const std::string& name) const {
  const PemPair client = IssueClientCertificate(ca, name);
  return {ca.certificate_pem, client.certificate_pem, client.private_key_pem};
}

const TestPki& Pki() {
  static const TestPki pki;
  return pki;
}

}  // namespace cleave::test_support
