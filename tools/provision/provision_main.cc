// cleave-provision: creates the certificates of a cleave deployment with the OpenSSL 3 C API.
#include <sys/stat.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "cleave/core/certificates.h"
#include "cleave/core/command_line.h"
#include "cleave/core/error.h"
#include "cleave/core/file_io.h"

namespace {

constexpr const char* kDescription =
    R"(cleave-provision: certificates for a cleave deployment (no openssl tool needed).

The certificate model (mutual TLS):
  - One CA per deployment signs every certificate (EC P-256 keys, ECDSA-SHA256).
  - The server certificate carries SANs for localhost, 127.0.0.1, ::1 and every --server-name
    (the DNS names or IP addresses clients will dial).
  - Each hospital gets its own client certificate whose CN is the hospital's name. That CN is the
    identity the server sees; identity never comes from a message field.
  - The server accepts only clients whose certificate chains to the CA; clients accept only a
    server certificate from the same CA.
  - Keep ca.key offline: it is needed only to add hospitals later (--add-client). Anyone holding
    it can mint identities.

Writes into --out (created mode 0700 if missing):
  ca.crt ca.key                 the CA (new deployments only)
  server.crt server.key         the server's certificate and key
  clients/NAME.crt NAME.key     one pair per hospital
Private keys get mode 0600, certificates 0644. Nothing is written if any file exists, unless
--force is given. Hand out: to the server ca.crt, server.crt, server.key; to each hospital ca.crt,
clients/NAME.crt, clients/NAME.key. Names: 1..64 of [A-Za-z0-9._-], starting with a letter or
digit.

Examples:
  cleave-provision --out pki --server-name split.example.org --client st-mary --client riverside
  cleave-provision --out pki --add-client north-clinic

Exit codes: 0 ok, 1 internal error, 2 bad flags or files.)";

// mkdir -p: missing parents get 0755, `path` itself `mode` (an existing one is left as it is).
void MakeDirectory(const std::string& path, mode_t mode) {
  for (size_t slash = path.find('/', 1);; slash = path.find('/', slash + 1)) {
    const std::string prefix = path.substr(0, slash);
    const mode_t prefix_mode = slash == std::string::npos ? mode : 0755;
    if (!prefix.empty() && ::mkdir(prefix.c_str(), prefix_mode) != 0 && errno != EEXIST) {
      throw cleave::UserError("cannot create directory '" + prefix + "': " + std::strerror(errno));
    }
    if (slash == std::string::npos) break;
  }
}

// "pki/" and "pki" name the same directory; keep printed paths tidy.
std::string WithoutTrailingSlashes(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  return path;
}

struct Output {
  std::string path;
  std::string bytes;
  mode_t mode;
};

int Run(int argc, char** argv) {
  CLI::App app(kDescription, "cleave-provision");
  app.get_formatter()->column_width(34);
  std::string out_dir;
  std::vector<std::string> server_names, clients, add_clients;
  std::string ca_name = "cleave CA", server_cn = "cleave-server";
  bool force = false;
  int days = 825;
  app.add_option("--out", out_dir, "Directory for the certificates (created if missing)")
      ->required();
  CLI::Option* client_option =
      app.add_option("--client", clients, "A hospital to issue a certificate for (repeatable)");
  CLI::Option* server_name_option = app.add_option("--server-name", server_names,
                                                   "Extra server SAN: DNS name or IP (repeatable)");
  CLI::Option* ca_name_option =
      app.add_option("--ca-name", ca_name, "Common name of a new CA")->capture_default_str();
  CLI::Option* server_cn_option =
      app.add_option("--server-cn", server_cn, "Common name of the server certificate")
          ->capture_default_str();
  app.add_option("--add-client", add_clients,
                 "Add a hospital to the CA already in --out (repeatable)")
      ->excludes(client_option)
      ->excludes(server_name_option)
      ->excludes(ca_name_option)
      ->excludes(server_cn_option);
  app.add_option("--days", days, "Validity of new certificates in days")
      ->check(CLI::Range(1, 36500))
      ->capture_default_str();
  // A new CA invalidates every certificate the old one issued: say so where --force is explained.
  app.add_flag("--force", force,
               "Overwrite existing files (a new CA orphans all old certificates)");
  if (const auto code = cleave::ParseCommandLine(app, argc, argv)) return *code;
  out_dir = WithoutTrailingSlashes(out_dir);
  if (!add_clients.empty()) clients = add_clients;
  std::set<std::string> unique_clients;
  for (const std::string& name : clients) {
    CLEAVE_CHECK_USER(unique_clients.insert(name).second, "client '", name,
                      "' is given more than once");
  }

  std::vector<Output> outputs;
  cleave::PemPair ca;
  if (!add_clients.empty()) {
    // Checks with file names in the errors: both PEM, the key matches, the CA is self-signed.
    const cleave::TlsFiles existing =
        cleave::LoadTlsFiles(out_dir + "/ca.crt", out_dir + "/ca.crt", out_dir + "/ca.key");
    ca = {existing.certificate_pem, existing.private_key_pem};
  } else {
    ca = cleave::CreateCertificateAuthority(ca_name, days);
    const cleave::PemPair server =
        cleave::IssueServerCertificate(ca, server_cn, server_names, days);
    outputs.push_back({out_dir + "/ca.crt", ca.certificate_pem, 0644});
    outputs.push_back({out_dir + "/ca.key", ca.private_key_pem, 0600});
    outputs.push_back({out_dir + "/server.crt", server.certificate_pem, 0644});
    outputs.push_back({out_dir + "/server.key", server.private_key_pem, 0600});
  }
  for (const std::string& name : clients) {
    const cleave::PemPair client = cleave::IssueClientCertificate(ca, name, days);
    outputs.push_back({out_dir + "/clients/" + name + ".crt", client.certificate_pem, 0644});
    outputs.push_back({out_dir + "/clients/" + name + ".key", client.private_key_pem, 0600});
  }
  // Refuse before writing anything, so a refusal leaves the directory as it was.
  if (!force) {
    for (const Output& output : outputs) {
      CLEAVE_CHECK_USER(!cleave::FileExists(output.path), "'", output.path,
                        "' exists; refusing to overwrite it (use --force)");
    }
  }
  // Both directories hold private keys.
  MakeDirectory(out_dir, 0700);
  if (!clients.empty()) MakeDirectory(out_dir + "/clients", 0700);
  for (const Output& output : outputs) {
    cleave::WriteFileAtomic(output.path, output.bytes, output.mode);
    std::printf("wrote %s (mode %04o)\n", output.path.c_str(), static_cast<unsigned>(output.mode));
  }
  if (add_clients.empty()) {
    std::printf("keep %s/ca.key offline; it is needed only for --add-client\n", out_dir.c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return cleave::RunCommand("cleave-provision", [&] { return Run(argc, argv); });
}
