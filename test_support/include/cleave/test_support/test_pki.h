// Throwaway TLS material for the server and client tests: a CA, a server certificate for localhost
// and client certificates (CN = the hospital's name), all in memory.
#pragma once

#include <string>

#include "cleave/core/certificates.h"

namespace cleave::test_support {

struct TestPki {
  PemPair ca = CreateCertificateAuthority("cleave test CA");
  PemPair server = IssueServerCertificate(ca, "cleave-server", {});
  TlsFiles ServerFiles() const;
  // A new certificate for `name`, signed by `ca`.
  TlsFiles ClientFiles(const std::string& name) const;
};

// One per test binary: making certificates takes a few milliseconds each.
const TestPki& Pki();

}  // namespace cleave::test_support
