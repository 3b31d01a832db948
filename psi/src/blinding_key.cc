#include "cleave/psi/blinding_key.h"

#include <openssl/rand.h>

#include "cleave/core/error.h"
#include "openssl_handles.h"

namespace cleave::psi {

struct BlindingKey::Scalar {
  detail::Bn k;
};

BlindingKey::BlindingKey(std::shared_ptr<const Scalar> scalar) : scalar_(std::move(scalar)) {}

BlindingKey BlindingKey::Random() {
  auto scalar = std::make_shared<Scalar>();
  scalar->k = detail::NewBn();
  do {
    CLEAVE_ENFORCE(BN_priv_rand_range(scalar->k.get(), detail::Curve().order) == 1,
                   "OpenSSL: cannot draw a random scalar");
  } while (BN_is_zero(scalar->k.get()));
  return BlindingKey(std::move(scalar));
}

BlindingKey BlindingKey::FromBytes(const std::string& big_endian) {
  auto scalar = std::make_shared<Scalar>();
  scalar->k.reset(BN_bin2bn(reinterpret_cast<const unsigned char*>(big_endian.data()),
                            static_cast<int>(big_endian.size()), nullptr));
  CLEAVE_ENFORCE(scalar->k != nullptr, "OpenSSL: BN_bin2bn failed");
  CLEAVE_CHECK_INPUT(!BN_is_zero(scalar->k.get()) &&
                         BN_cmp(scalar->k.get(), detail::Curve().order) < 0,
                     "a blinding key must be in [1, n-1]");
  return BlindingKey(std::move(scalar));
}

std::vector<std::string> BlindingKey::Blind(const std::vector<std::string>& points) const {
  detail::BnCtx ctx = detail::NewBnCtx();
  detail::Point product = detail::NewPoint();
  std::vector<std::string> out;
  out.reserve(points.size());
  for (size_t i = 0; i < points.size(); ++i) {
    detail::Point point;
    try {
      point = detail::DecodePoint(points[i], ctx.get());
    } catch (const InvalidInput& error) {
      throw InvalidInput("PSI point " + std::to_string(i) + ": " + error.what());
    }
    CLEAVE_ENFORCE(EC_POINT_mul(detail::Curve().group, product.get(), nullptr, point.get(),
                                scalar_->k.get(), ctx.get()) == 1,
                   "OpenSSL: EC_POINT_mul failed");
    out.push_back(detail::EncodePoint(product.get(), ctx.get()));
  }
  return out;
}

}  // namespace cleave::psi
