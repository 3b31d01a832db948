// Throwaway TLS material for the server and client tests: a CA, a server certificate for localhost
// and client certificates (CN = the hospital's name), all in memory.
#pragma once

#include <string>

#include "cleave/core/certificates.h"

namespace cleave::test_support {

struct TestPki {
  PemPair ca = CreateCertificateAuthority("cleave test CA");
  PemPair server = IssueServerCertificate(ca, "cleave-server", {});
  TlsFiles ServerFiles() const {
    return {ca.certificate_pem, server.certificate_pem, server.private_key_pem};
  }
  TlsFiles ClientFiles(const std::string& name) const {
    const PemPair client = IssueClientCertificate(ca, name);
    return {ca.certificate_pem, client.certificate_pem, client.private_key_pem};
  }
};

// One per test binary: making certificates takes a few milliseconds each.
inline const TestPki& Pki() {
  static const TestPki pki;
  return pki;
}

}  // namespace cleave::test_support
