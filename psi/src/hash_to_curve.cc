#include "cleave/psi/hash_to_curve.h"

#include <openssl/evp.h>

#include <cstdint>

#include "cleave/core/error.h"
#include "openssl_handles.h"

namespace cleave::psi {
namespace {

using detail::Bn;
using detail::Curve;
using detail::NewBn;

std::string Sha256(const std::string& data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  CLEAVE_ENFORCE(EVP_Digest(data.data(), data.size(), digest, &size, EVP_sha256(), nullptr) == 1,
                 "OpenSSL: SHA-256 failed");
  return std::string(reinterpret_cast<const char*>(digest), size);
}

// Field arithmetic mod p on fresh BIGNUMs.
struct Field {
  BN_CTX* ctx;
  Bn Mul(const BIGNUM* x, const BIGNUM* y) const { return Op(BN_mod_mul, x, y); }
  Bn Add(const BIGNUM* x, const BIGNUM* y) const { return Op(BN_mod_add, x, y); }
  Bn Sub(const BIGNUM* x, const BIGNUM* y) const { return Op(BN_mod_sub, x, y); }
  Bn Inv0(const BIGNUM* x) const {  // x^(p-2): 0 maps to 0 (RFC 9380 inv0)
    Bn exponent = NewBn(), two = NewBn(), r = NewBn();
    CLEAVE_ENFORCE(BN_set_word(two.get(), 2) && BN_sub(exponent.get(), Curve().p, two.get()) &&
                       BN_mod_exp(r.get(), x, exponent.get(), Curve().p, ctx),
                   "OpenSSL: field inverse failed");
    return r;
  }
  bool IsSquare(const BIGNUM* x) const {  // Euler's criterion; 0 counts as a square
    Bn exponent = NewBn(), r = NewBn();
    CLEAVE_ENFORCE(BN_rshift1(exponent.get(), Curve().p) &&
                       BN_mod_exp(r.get(), x, exponent.get(), Curve().p, ctx),
                   "OpenSSL: Euler's criterion failed");
    return BN_is_zero(r.get()) || BN_is_one(r.get());
  }
  Bn Sqrt(const BIGNUM* x) const {
    Bn r(BN_mod_sqrt(nullptr, x, Curve().p, ctx));
    CLEAVE_ENFORCE(r != nullptr, "OpenSSL: square root of a square failed");
    return r;
  }
  Bn CurveRhs(const BIGNUM* x) const {  // x^3 + a x + b
    return Add(Add(Mul(Mul(x, x).get(), x).get(), Mul(detail::Curve().a, x).get()).get(),
               detail::Curve().b);
  }
  template <typename F>
  Bn Op(F f, const BIGNUM* x, const BIGNUM* y) const {
    Bn r = NewBn();
    CLEAVE_ENFORCE(f(r.get(), x, y, detail::Curve().p, ctx) == 1, "OpenSSL: field op failed");
    return r;
  }
};

Bn Word(uint64_t value, bool negative) {
  Bn r = NewBn();
  CLEAVE_ENFORCE(BN_set_word(r.get(), value), "OpenSSL: BN_set_word failed");
  BN_set_negative(r.get(), negative ? 1 : 0);
  return r;
}

Bn Reduced(const BIGNUM* x, BN_CTX* ctx) {
  Bn r = NewBn();
  CLEAVE_ENFORCE(BN_nnmod(r.get(), x, Curve().p, ctx), "OpenSSL: BN_nnmod failed");
  return r;
}

// map_to_curve_simple_swu (RFC 9380 section 6.6.2, the straight-line description) for P-256,
// Z = -10; writes the point's affine coordinates.
void SimplifiedSwu(const BIGNUM* u, BN_CTX* ctx, Bn* x_out, Bn* y_out) {
  const Field f{ctx};
  const Bn z = Reduced(Word(10, true).get(), ctx);
  const Bn u2 = f.Mul(u, u);
  const Bn z_u2 = f.Mul(z.get(), u2.get());
  const Bn tv1 = f.Inv0(f.Add(f.Mul(z_u2.get(), z_u2.get()).get(), z_u2.get()).get());
  const Bn minus_b_over_a = f.Mul(f.Sub(Word(0, false).get(), Curve().b).get(),
                                  f.Inv0(Curve().a).get());
  Bn x1 = f.Mul(minus_b_over_a.get(), f.Add(Word(1, false).get(), tv1.get()).get());
  if (BN_is_zero(tv1.get())) {  // x1 = B / (Z * A)
    x1 = f.Mul(Curve().b, f.Inv0(f.Mul(z.get(), Curve().a).get()).get());
  }
  const Bn gx1 = f.CurveRhs(x1.get());
  if (f.IsSquare(gx1.get())) {
    *x_out = std::move(x1);
    *y_out = f.Sqrt(gx1.get());
  } else {
    *x_out = f.Mul(z_u2.get(), x1.get());
    *y_out = f.Sqrt(f.CurveRhs(x_out->get()).get());
  }
  if (BN_is_odd(u) != BN_is_odd(y_out->get())) *y_out = f.Sub(Word(0, false).get(), y_out->get());
}

detail::Point MapToCurve(const BIGNUM* u, BN_CTX* ctx) {
  Bn x, y;
  SimplifiedSwu(u, ctx, &x, &y);
  detail::Point point = detail::NewPoint();
  CLEAVE_ENFORCE(
      EC_POINT_set_affine_coordinates(Curve().group, point.get(), x.get(), y.get(), ctx) == 1,
      "hash to curve: the SWU map left the curve");
  return point;
}

std::string Hex(const BIGNUM* value) {
  unsigned char bytes[32];
  CLEAVE_ENFORCE(BN_bn2binpad(value, bytes, 32) == 32, "OpenSSL: BN_bn2binpad failed");
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char byte : bytes) {
    out += digits[byte >> 4];
    out += digits[byte & 15];
  }
  return out;
}

}  // namespace

std::string ExpandMessageXmd(std::string_view message, std::string_view dst, size_t length) {
  CLEAVE_CHECK_INPUT(!dst.empty() && dst.size() <= 255, "hash to curve: bad domain tag length");
  const size_t ell = (length + 31) / 32;
  CLEAVE_CHECK_INPUT(length > 0 && ell <= 255, "hash to curve: bad output length ", length);
  const std::string dst_prime = std::string(dst) + static_cast<char>(dst.size());
  const std::string b0 = Sha256(std::string(64, '\0') + std::string(message) +
                                static_cast<char>(length >> 8) + static_cast<char>(length & 255) +
                                '\0' + dst_prime);
  std::string previous = Sha256(b0 + '\1' + dst_prime), out = previous;
  for (size_t i = 2; i <= ell; ++i) {
    std::string mixed = b0;
    for (size_t j = 0; j < mixed.size(); ++j) mixed[j] = static_cast<char>(mixed[j] ^ previous[j]);
    previous = Sha256(mixed + static_cast<char>(i) + dst_prime);
    out += previous;
  }
  return out.substr(0, length);
}

std::string HashToCurve(std::string_view message, std::string_view dst) {
  constexpr size_t kFieldBytes = 48;  // L = ceil((256 + 128) / 8)
  const std::string uniform = ExpandMessageXmd(message, dst, 2 * kFieldBytes);
  detail::BnCtx ctx = detail::NewBnCtx();
  detail::Point sum = detail::NewPoint();
  CLEAVE_ENFORCE(EC_POINT_set_to_infinity(Curve().group, sum.get()) == 1,
                 "OpenSSL: EC_POINT_set_to_infinity failed");
  for (int i = 0; i < 2; ++i) {
    Bn u(BN_bin2bn(reinterpret_cast<const unsigned char*>(uniform.data()) + i * kFieldBytes,
                   kFieldBytes, nullptr));
    CLEAVE_ENFORCE(u != nullptr, "OpenSSL: BN_bin2bn failed");
    const Bn reduced = Reduced(u.get(), ctx.get());
    const detail::Point q = MapToCurve(reduced.get(), ctx.get());
    CLEAVE_ENFORCE(EC_POINT_add(Curve().group, sum.get(), sum.get(), q.get(), ctx.get()) == 1,
                   "OpenSSL: EC_POINT_add failed");
  }
  // The sum of two independent map outputs is the point at infinity with negligible probability.
  CLEAVE_ENFORCE(EC_POINT_is_at_infinity(Curve().group, sum.get()) == 0,
                 "hash to curve: the point at infinity");
  return detail::EncodePoint(sum.get(), ctx.get());
}

void PointCoordinatesHex(const std::string& point, std::string* x, std::string* y) {
  detail::BnCtx ctx = detail::NewBnCtx();
  const detail::Point decoded = detail::DecodePoint(point, ctx.get());
  Bn bx = NewBn(), by = NewBn();
  CLEAVE_ENFORCE(EC_POINT_get_affine_coordinates(Curve().group, decoded.get(), bx.get(), by.get(),
                                                 ctx.get()) == 1,
                 "OpenSSL: EC_POINT_get_affine_coordinates failed");
  *x = Hex(bx.get());
  *y = Hex(by.get());
}

}  // namespace cleave::psi
