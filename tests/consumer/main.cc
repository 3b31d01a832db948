// Links cleave::client from an installed cleave and touches three of its layers: the client
// library, the codec and the generated protocol messages. Exits 0 when all answer as expected.
#include <cstdint>
#include <cstdio>

#include "cleave/client/progress.h"
#include "cleave/compress/sparse_codec.h"
#include "cleave/protocol/cleave.pb.h"
#include "cleave/protocol/version.h"

int main() {
  if (cleave::client::ParseProgressMode("lines") != cleave::client::ProgressMode::kLines) return 1;

  const uint32_t indices[] = {3, 17};
  const float values[] = {1.5f, -2.0f};
  const std::string bytes = cleave::EncodeSparse(64, indices, values, 2, cleave::ValuePrecision::kFp32);
  const cleave::DecodedSparse decoded = cleave::DecodeSparse(bytes, cleave::DecodeLimits{});
  if (decoded.indices.size() != 2 || decoded.values[1] != -2.0f) return 1;

  cleave::v1::JoinRequest request;
  request.set_protocol_version(cleave::protocol::kProtocolVersion);
  if (request.ByteSizeLong() == 0) return 1;

  std::printf("consumer: cleave::client linked and working\n");
  return 0;
}
