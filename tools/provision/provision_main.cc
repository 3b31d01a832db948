// cleave-provision: creates the certificates of a cleave deployment with the OpenSSL 3 C API.
#include <CLI/CLI.hpp>

#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "cleave/core/certificates.h"
#include "cleave/core/error.h"
#include "cleave/core/file_io.h"

namespace {

constexpr const char* kDescription = R"(cleave-provision: certificates for a cleave deployment (no openssl tool needed).

The certificate model: one CA per deployment signs everything. The server certificate carries
SANs for localhost, 127.0.0.1, ::1 and every --server-name. Each hospital gets a client
certificate whose CN is its name; that CN is the identity the server sees (never a message
field). The server accepts only clients signed by the CA; clients accept only a server signed by
it. Keep ca.key offline: it is needed only to add hospitals (--add-client).

Writes into --out:
  ca.crt ca.key                 the CA (new deployments only)
  server.crt server.key         the server's certificate and key
  clients/NAME.crt NAME.key     one pair per hospital
Private keys are written with mode 0600. Existing files are never overwritten without --force.

Examples:
  cleave-provision --out pki --server-name split.example.org --client st-mary --client riverside
  cleave-provision --out pki --add-client north-clinic

Exit codes: 0 ok, 1 internal error, 2 bad flags or files.)";

// mkdir -p: creates missing parents too.
void MakeDirectory(const std::string& path, mode_t mode) {
  for (size_t slash = path.find('/', 1); ; slash = path.find('/', slash + 1)) {
    const std::string prefix = path.substr(0, slash);
    if (!prefix.empty() && ::mkdir(prefix.c_str(), mode) != 0 && errno != EEXIST) {
      throw cleave::UserError("cannot create directory '" + prefix + "': " + std::strerror(errno));
    }
    if (slash == std::string::npos) break;
  }
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
  app.add_option("--client", clients, "A hospital to issue a client certificate for (repeatable)");
  app.add_option("--add-client", add_clients,
                 "Add a hospital to the existing CA in --out (repeatable; needs ca.crt, ca.key)");
  app.add_option("--server-name", server_names,
                 "Extra DNS name or IP address for the server certificate (repeatable)");
  app.add_option("--ca-name", ca_name, "Common name of a new CA")->capture_default_str();
  app.add_option("--server-cn", server_cn, "Common name of the server certificate")
      ->capture_default_str();
  app.add_option("--days", days, "Validity of new certificates in days")->capture_default_str();
  app.add_flag("--force", force, "Overwrite existing files");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "cleave-provision: error: %s (see --help)\n", e.what());
    return 2;
  }
  CLEAVE_CHECK_USER(add_clients.empty() || (clients.empty() && server_names.empty()),
                    "--add-client adds to an existing CA; it cannot be combined with --client or "
                    "--server-name");

  std::vector<Output> outputs;
  cleave::PemPair ca;
  if (!add_clients.empty()) {
    ca.certificate_pem = cleave::ReadFile(out_dir + "/ca.crt", "CA certificate");
    ca.private_key_pem = cleave::ReadFile(out_dir + "/ca.key", "CA private key");
    clients = add_clients;
  } else {
    ca = cleave::CreateCertificateAuthority(ca_name, days);
    const cleave::PemPair server = cleave::IssueServerCertificate(ca, server_cn, server_names, days);
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
  MakeDirectory(out_dir, 0755);
  if (!clients.empty()) MakeDirectory(out_dir + "/clients", 0755);
  for (const Output& output : outputs) {
    cleave::WriteFileAtomic(output.path, output.bytes, output.mode);
    std::printf("wrote %s%s\n", output.path.c_str(), output.mode == 0600 ? " (0600)" : "");
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(argc, argv);
  } catch (const cleave::UserError& e) {
    std::fprintf(stderr, "cleave-provision: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cleave-provision: internal error: %s\n", e.what());
    return 1;
  }
}
