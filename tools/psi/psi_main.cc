// cleave-psi: one party of a private set intersection of sample ids, through a cleave-server
// started with --psi-parties N (vertical split learning aligns its parties' samples with it).
#include <CLI/CLI.hpp>

#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

#include "cleave/client/psi_party.h"
#include "cleave/core/certificates.h"
#include "cleave/core/command_line.h"
#include "cleave/core/error.h"
#include "cleave/core/file_io.h"
#include "cleave/protocol/status_error.h"

namespace {

constexpr const char* kDescription =
    R"(cleave-psi: which of my sample ids do all parties hold? (private set intersection)

Every party runs cleave-psi with its own ids against the same cleave-server (--psi-parties N).
Each party hashes its ids to points of the P-256 curve (RFC 9380 hash-to-curve) and blinds them
with a secret key of its own; the server hands each blinded set around the ring of parties, each
blinding it once more, and compares only sets blinded by every party. A party learns which of its
own ids every party holds, and nothing about the others' other ids; the server sees only blinded
points and learns the set and intersection sizes. (Assumes parties follow the protocol: one that
does not can spoil the result, not read others' ids.)

--ids: one id per line (surrounding spaces and CR are dropped, empty lines and duplicates
ignored). --out: the shared ids, sorted, one per line.

Example:
  cleave-psi --server lab.example:50051 --ca pki/ca.crt --cert pki/clients/lab.crt \
             --key pki/clients/lab.key --ids lab-ids.txt --out shared-ids.txt

Exit codes: 0 ok, 1 internal error, 2 bad flags or files, or no result within --timeout (a
party missing), 3 the server refused or could not be reached.)";

std::vector<std::string> ReadIds(const std::string& path) {
  std::istringstream lines(cleave::ReadFile(path, "--ids"));
  std::vector<std::string> ids;
  std::string line;
  while (std::getline(lines, line)) {
    const size_t begin = line.find_first_not_of(" \t\r");
    if (begin == std::string::npos) continue;
    const size_t end = line.find_last_not_of(" \t\r");
    ids.push_back(line.substr(begin, end - begin + 1));
  }
  return ids;
}

struct Flags {
  cleave::client::ConnectOptions connect;
  std::string ca_path, cert_path, key_path, ids_path, out_path;
  double timeout_seconds = 600;

  void Register(CLI::App& app) {
    app.add_option("--server", connect.target, "Server address host:port")->capture_default_str();
    app.add_option("--ca", ca_path, "CA certificate that signed the server's certificate (PEM)");
    app.add_option("--cert", cert_path, "This party's client certificate (PEM)");
    app.add_option("--key", key_path, "This party's private key (PEM)");
    app.add_option("--server-name", connect.server_name_override,
                   "Name to check in the server certificate when it differs from --server's host");
    app.add_flag("--insecure", connect.insecure,
                 "Plaintext, no certificates. For debugging only: the server is not "
                 "authenticated and does not know who this party is");
    app.add_option("--ids", ids_path, "This party's sample ids, one per line")->required();
    app.add_option("--out", out_path, "Write the shared ids here, sorted, one per line")
        ->required();
    app.add_option("--timeout", timeout_seconds,
                   "Seconds to wait for the other parties and the result")
        ->capture_default_str();
  }
};

int Run(int argc, char** argv) {
  CLI::App app(kDescription, "cleave-psi");
  app.get_formatter()->column_width(30);
  Flags f;
  f.Register(app);
  if (const auto code = cleave::ParseCommandLine(app, argc, argv)) return *code;
  CLEAVE_CHECK_USER(f.timeout_seconds > 0, "--timeout must be > 0");
  if (!f.connect.insecure) {
    CLEAVE_CHECK_USER(!f.ca_path.empty() && !f.cert_path.empty() && !f.key_path.empty(),
                      "--ca, --cert and --key are required (or --insecure for debugging)");
    f.connect.tls = cleave::LoadTlsFiles(f.ca_path, f.cert_path, f.key_path);
  }
  std::vector<std::string> ids = ReadIds(f.ids_path);
  cleave::WriteFileAtomic(f.out_path, "");  // fail early on an unwritable --out
  cleave::client::PsiPartyOptions options;
  options.timeout = std::chrono::milliseconds(static_cast<int64_t>(f.timeout_seconds * 1000));
  cleave::client::GrpcPsiTransport transport(f.connect);
  cleave::client::PsiOutcome outcome;
  try {
    outcome = cleave::client::RunPsiParty(transport, std::move(ids), options);
  } catch (const cleave::protocol::StatusError& error) {  // refused, or no server
    std::fprintf(stderr, "cleave-psi: error: %s: %s\n",
                 cleave::protocol::StatusCodeName(error.code()), error.what());
    return 3;
  }
  std::string text;
  for (const std::string& id : outcome.shared_ids) text += id + "\n";
  cleave::WriteFileAtomic(f.out_path, text);
  std::printf("PSI: party %u of %u, %zu distinct ids, %zu shared by all parties; written to %s\n",
              outcome.party, outcome.parties, outcome.own_ids, outcome.shared_ids.size(),
              f.out_path.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return cleave::RunCommand("cleave-psi", [&] { return Run(argc, argv); });
}
