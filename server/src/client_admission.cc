#include "cleave/server/client_admission.h"

#include <spdlog/spdlog.h>

#include "cleave/core/error.h"
#include "cleave/core/peer_text.h"
#include "cleave/protocol/version.h"
#include "cleave/server/refusal.h"

namespace cleave::server {

void CheckProtocolVersion(uint32_t version) {
  if (version != protocol::kProtocolVersion) {
    throw Refusal(RefusalKind::kMismatch,
                  detail::Concat("protocol version ", version, ", server speaks ",
                                 protocol::kProtocolVersion));
  }
}

void AdmitJoin(const std::string& identity, const v1::JoinRequest& request,
               const JoinRules& rules) {
  if (request.protocol_version() != protocol::kProtocolVersion) {
    throw Refusal(RefusalKind::kMismatch,
                  detail::Concat("client speaks protocol version ", request.protocol_version(),
                                 ", server speaks ", protocol::kProtocolVersion));
  }
  if (!rules.allowed_clients.empty() && rules.allowed_clients.count(identity) == 0) {
    spdlog::warn("refused Join from '{}': not on the client allowlist", PeerText(identity));
    throw Refusal(RefusalKind::kNotAllowed,
                  "client '" + PeerText(identity) + "' is not allowed to join this server");
  }
  if (request.model_fingerprint() != rules.fingerprint) {
    // Peer text is escaped and capped: it cannot forge a log line or blow up the status.
    spdlog::warn("refused Join from '{}': model fingerprint {} ({}) != server's {} ({})",
                 PeerText(identity), PeerText(request.model_fingerprint(), 64),
                 PeerText(request.model_description()), rules.fingerprint, rules.model_description);
    throw Refusal(RefusalKind::kMismatch,
                  detail::Concat("model fingerprint mismatch: client ",
                                 PeerText(request.model_fingerprint(), 64), " (",
                                 PeerText(request.model_description()), "), server ",
                                 rules.fingerprint, " (", rules.model_description, ")"));
  }
}

v1::JoinReply JoinReplyFor(const JoinRules& rules, const std::string& identity,
                           const std::string& session_id, int64_t server_step,
                           int64_t client_model_version) {
  v1::JoinReply reply;
  reply.set_protocol_version(protocol::kProtocolVersion);
  reply.set_session_id(session_id);
  reply.set_client_name(identity);
  reply.set_model_fingerprint(rules.fingerprint);
  *reply.mutable_compression() = rules.compression;
  reply.set_server_step(server_step);
  reply.set_client_model_version(client_model_version);
  *reply.mutable_server() = rules.server;
  return reply;
}

}  // namespace cleave::server
