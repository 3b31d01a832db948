#include "openssl_handles.h"

#include <openssl/err.h>
#include <openssl/obj_mac.h>

#include "cleave/core/error.h"
#include "cleave/psi/hash_to_curve.h"

namespace cleave::psi::detail {
namespace {

template <typename T>
T Checked(T value, const char* what) {
  CLEAVE_ENFORCE(value != nullptr, "OpenSSL: ", what, " failed");
  return value;
}

}  // namespace

Bn NewBn() { return Bn(Checked(BN_new(), "BN_new")); }
BnCtx NewBnCtx() { return BnCtx(Checked(BN_CTX_new(), "BN_CTX_new")); }
Point NewPoint() { return Point(Checked(EC_POINT_new(Curve().group), "EC_POINT_new")); }

const P256& Curve() {
  static const P256 curve = [] {
    EC_GROUP* group = Checked(EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1), "P-256 group");
    BIGNUM *p = BN_new(), *a = BN_new(), *b = BN_new();
    CLEAVE_ENFORCE(p && a && b && EC_GROUP_get_curve(group, p, a, b, nullptr) == 1,
                   "OpenSSL: EC_GROUP_get_curve failed");
    return P256{group, p, a, b, EC_GROUP_get0_order(group)};
  }();  // lives as long as the process
  return curve;
}

std::string EncodePoint(const EC_POINT* point, BN_CTX* ctx) {
  std::string out(kPointBytes, '\0');
  const size_t written =
      EC_POINT_point2oct(Curve().group, point, POINT_CONVERSION_COMPRESSED,
                         reinterpret_cast<unsigned char*>(out.data()), out.size(), ctx);
  CLEAVE_ENFORCE(written == kPointBytes, "OpenSSL: cannot encode a point");
  return out;
}

Point DecodePoint(const std::string& bytes, BN_CTX* ctx) {
  CLEAVE_CHECK_INPUT(bytes.size() == kPointBytes && (bytes[0] == 2 || bytes[0] == 3),
                     "a PSI point must be a 33-byte compressed P-256 point");
  Point point = NewPoint();
  const bool ok = EC_POINT_oct2point(Curve().group, point.get(),
                                     reinterpret_cast<const unsigned char*>(bytes.data()),
                                     bytes.size(), ctx) == 1;
  ERR_clear_error();  // a refused encoding leaves OpenSSL errors queued
  CLEAVE_CHECK_INPUT(ok && EC_POINT_is_on_curve(Curve().group, point.get(), ctx) == 1 &&
                         EC_POINT_is_at_infinity(Curve().group, point.get()) == 0,
                     "a PSI point is not on P-256");
  return point;
}

}  // namespace cleave::psi::detail
