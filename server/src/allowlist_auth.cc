#include "cleave/server/allowlist_auth.h"

#include <spdlog/spdlog.h>

#include "cleave/core/peer_text.h"

namespace cleave::server {

grpc::Status AllowlistAuthProcessor::Process(const InputMetadata& auth_metadata,
                                             grpc::AuthContext* context,
                                             OutputMetadata* /*consumed_auth_metadata*/,
                                             OutputMetadata* /*response_metadata*/) {
  const auto names = context->FindPropertyValues("x509_common_name");
  const bool has_name = context->IsPeerAuthenticated() && !names.empty();
  const std::string name = has_name ? std::string(names.front().data(), names.front().size()) : "";
  if (has_name && (allowed_.empty() || allowed_.count(name) > 0)) return grpc::Status::OK;

  refused_.fetch_add(1);
  const auto path = auth_metadata.find(":path");
  const std::string method =
      path == auth_metadata.end() ? "?" : std::string(path->second.data(), path->second.size());
  if (!has_name) {
    spdlog::warn("refused {} before reading it: the client certificate has no CN",
                 PeerText(method));
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                        "the client certificate has no common name (CN)");
  }
  spdlog::warn("refused {} from '{}' before reading it: not on the client allowlist",
               PeerText(method), PeerText(name));
  return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                      "client '" + PeerText(name) + "' is not on this server's allowlist");
}

}  // namespace cleave::server
