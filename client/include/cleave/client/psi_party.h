// A party's side of the private set intersection (psi/, server/psi_relay.h): submit its blinded
// ids, blind the sets the relay hands it, and read which of its ids every party holds. Over any
// PsiTransport: gRPC to a cleave-server (GrpcPsiTransport), or a test's in-process relay.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cleave/client/grpc_link.h"
#include "cleave/protocol/cleave.pb.h"
#include "cleave/psi/blinding_key.h"

namespace cleave::client {

class PsiTransport {
 public:
  virtual ~PsiTransport() = default;
  virtual v1::PsiSubmitReply Submit(const v1::PsiSubmitRequest& request) = 0;
  virtual v1::PsiAwaitReply Await(const v1::PsiAwaitRequest& request) = 0;
};

// PsiSubmit and PsiAwait over the client channel (mutual TLS). The first call waits up to the
// connect timeout for the server; failures throw protocol::StatusError.
class GrpcPsiTransport final : public PsiTransport {
 public:
  explicit GrpcPsiTransport(const ConnectOptions& options);
  ~GrpcPsiTransport() override;
  v1::PsiSubmitReply Submit(const v1::PsiSubmitRequest& request) override;
  v1::PsiAwaitReply Await(const v1::PsiAwaitRequest& request) override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

struct PsiPartyOptions {
  std::chrono::milliseconds timeout{std::chrono::minutes(10)};  // for the whole intersection
};

struct PsiOutcome {
  std::vector<std::string> shared_ids;  // sorted
  size_t own_ids = 0;                   // distinct ids this party brought
  uint32_t party = 0, parties = 0;      // ring index and size
  int64_t sets_blinded = 0;             // other parties' sets this party blinded
};

// Runs this party to the end. Throws UserError if the result has not come within the timeout
// (a party missing), InvalidInput if the relay hands it something malformed (points that are not
// on P-256, a set of its own, hops out of range, bad positions), protocol::StatusError for a
// refused call.
PsiOutcome RunPsiParty(PsiTransport& transport, std::vector<std::string> ids,
                       const PsiPartyOptions& options = {},
                       psi::BlindingKey key = psi::BlindingKey::Random());

}  // namespace cleave::client
