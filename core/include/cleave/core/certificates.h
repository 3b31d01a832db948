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

// Every certificate has an EC P-256 key, a random serial (16 random bytes, top bit cleared to
// keep it positive), an ECDSA-SHA256 signature, subject O=cleave + CN, subjectKeyIdentifier and
// authorityKeyIdentifier. Bad names or a `valid_days` below 1 throw UserError; OpenSSL failures
// throw Error with OpenSSL's error text.

// A self-signed CA (basicConstraints CA:TRUE, keyUsage keyCertSign|cRLSign); CN 1..64 characters.
PemPair CreateCertificateAuthority(const std::string& common_name, int valid_days = 825);

// A server certificate signed by `ca`: CN = common_name, SANs DNS:localhost, IP:127.0.0.1, IP:::1
// plus every entry of `extra_names` (IP addresses become IP SANs, others DNS SANs, which follow
// the client-name rules below); extendedKeyUsage serverAuth. Throws UserError if `ca` is not a CA
// whose key matches its certificate.
PemPair IssueServerCertificate(const PemPair& ca, const std::string& common_name,
                               const std::vector<std::string>& extra_names, int valid_days = 825);

// A client certificate signed by `ca`: CN = client_name (the hospital's identity);
// extendedKeyUsage clientAuth. Throws UserError unless the name is 1..64 characters of
// [A-Za-z0-9._-] starting with a letter or digit (it also names the hospital's files), or if `ca`
// is not a CA whose key matches its certificate.
PemPair IssueClientCertificate(const PemPair& ca, const std::string& client_name,
                               int valid_days = 825);

// True if `certificate_pem` chains to `ca_pem` (signature, validity period, CA constraints).
bool VerifyCertificateChain(const std::string& ca_pem, const std::string& certificate_pem);

// The subject CN of a PEM certificate (throws InvalidInput if unparsable).
std::string CertificateCommonName(const std::string& certificate_pem);

// TLS material read from files, each failure a UserError naming the file: missing or unreadable,
// not PEM, an encrypted key (never prompts for a passphrase), a key that does not match the
// certificate, a certificate not signed by the CA.
struct TlsFiles {
  std::string ca_pem;           // CA that signs the peer
  std::string certificate_pem;  // our certificate
  std::string private_key_pem;  // our key
};
TlsFiles LoadTlsFiles(const std::string& ca_path, const std::string& cert_path,
                      const std::string& key_path);

}  // namespace cleave
