#include "cleave/client/vertical_party.h"

#include "cleave/core/error.h"
#include "cleave/core/peer_text.h"
#include "cleave/protocol/status_error.h"
#include "cleave/protocol/vertical_fingerprint.h"

namespace cleave::client {

void DescribeVerticalParty(SplitConfig config, int party, int64_t num_classes,
                           const std::vector<int64_t>& cut_shape, v1::JoinRequest* request) {
  if (config != SplitConfig::kVertical) return;
  request->set_model_fingerprint(protocol::VerticalFingerprint(num_classes));
  request->set_vertical_party(party);
  request->mutable_vertical_cut_shape()->Add(cut_shape.begin(), cut_shape.end());
}

VerticalRole AdoptVerticalRole(SplitConfig config, int party, const v1::JoinReply& reply) {
  const std::string& told = reply.server().config();
  const char* mine = SplitConfigName(config);
  if (told != mine && !(told.empty() && config == SplitConfig::kVanilla)) {
    throw protocol::StatusError(grpc::StatusCode::FAILED_PRECONDITION,
                                "the server runs the " +
                                    PeerText(told.empty() ? "vanilla" : told, 32) +
                                    " configuration, this client " + mine + " (--config)");
  }
  VerticalRole role;
  if (config != SplitConfig::kVertical) return role;
  const v1::ServerConfig& server = reply.server();
  CLEAVE_CHECK_INPUT(server.vertical_parties() >= 1 && party < server.vertical_parties() &&
                         server.vertical_label_holder() >= 0 &&
                         server.vertical_label_holder() < server.vertical_parties(),
                     "the server's vertical settings do not fit: ", server.vertical_parties(),
                     " parties, label holder ", server.vertical_label_holder(), ", this party ",
                     party);
  role.enabled = true;
  role.party = party;
  role.holds_labels = server.vertical_label_holder() == party;
  role.batch_seed = server.vertical_batch_seed();
  return role;
}

}  // namespace cleave::client
