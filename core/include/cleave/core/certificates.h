// Certificate provisioning with the OpenSSL 3 C API (no openssl tool), and loading of PEM files
// for TLS. Used by cleave-provision and by tests that need throwaway certificates.
#pragma once

#include <string>
#include <vector>

namespace cleave {

struct PemPair {
  std::string certificate_pem;
  std::string private_key_pem;
};

// A self-signed CA (EC P-256 key, basicConstraints CA:TRUE, keyUsage keyCertSign|cRLSign).
PemPair CreateCertificateAuthority(const std::string& common_name, int valid_days = 825);

// A server certificate signed by `ca`: CN = common_name, SANs DNS:localhost, IP:127.0.0.1, IP:::1
// plus every entry of `extra_names` (IP addresses become IP SANs, others DNS SANs);
// extendedKeyUsage serverAuth.
PemPair IssueServerCertificate(const PemPair& ca, const std::string& common_name,
                               const std::vector<std::string>& extra_names, int valid_days = 825);

// A client certificate signed by `ca`: CN = client_name (the hospital's identity);
// extendedKeyUsage clientAuth. Throws UserError if the name is empty or has characters outside
// [A-Za-z0-9._-].
PemPair IssueClientCertificate(const PemPair& ca, const std::string& client_name,
                               int valid_days = 825);

// True if `certificate_pem` chains to `ca_pem` (signature, validity period, CA constraints).
bool VerifyCertificateChain(const std::string& ca_pem, const std::string& certificate_pem);

// The subject CN of a PEM certificate (throws InvalidInput if unparsable).
std::string CertificateCommonName(const std::string& certificate_pem);

// TLS material read from files, each failure a UserError naming the file: missing or unreadable,
// not PEM, a key that does not match the certificate, a certificate not signed by the CA.
struct TlsFiles {
  std::string ca_pem;           // CA that signs the peer
  std::string certificate_pem;  // our certificate
  std::string private_key_pem;  // our key
};
TlsFiles LoadTlsFiles(const std::string& ca_path, const std::string& cert_path,
                      const std::string& key_path);

}  // namespace cleave
