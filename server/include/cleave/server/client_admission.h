// Whether a client fits this server: the protocol version every request states, and at Join the
// allowlist and the model fingerprint; and what an admitted client is told. A misfit is a Refusal
// (refusal.h): kMismatch, fatal for the client, or kNotAllowed. Peer text in the refusal and the
// log is escaped and capped.
#pragma once

#include <cstdint>
#include <set>
#include <string>

#include "cleave/protocol/cleave.pb.h"

namespace cleave::server {

// Throws Refusal kMismatch unless `version` is the protocol version this server speaks.
void CheckProtocolVersion(uint32_t version);

struct JoinRules {
  std::set<std::string> allowed_clients;  // empty: any client the CA signed
  std::string fingerprint;                // the server's model fingerprint
  std::string model_description;          // for the refusal and the log
  v1::CompressionConfig compression;      // told to the client in the reply
  v1::ServerConfig server;                // likewise
};

// Throws Refusal: kMismatch for another protocol version or model fingerprint (naming both),
// kNotAllowed for an identity not on the allowlist.
void AdmitJoin(const std::string& identity, const v1::JoinRequest& request, const JoinRules& rules);

// The reply to an admitted Join that opened `session_id`.
v1::JoinReply JoinReplyFor(const JoinRules& rules, const std::string& identity,
                           const std::string& session_id, int64_t server_step,
                           int64_t client_model_version);

}  // namespace cleave::server
