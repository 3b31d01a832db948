// Owning handles for the OpenSSL objects the PSI code uses, and the P-256 group (private to psi/).
#pragma once

#include <openssl/bn.h>
#include <openssl/ec.h>

#include <memory>
#include <string>

namespace cleave::psi::detail {

struct BnFree {
  void operator()(BIGNUM* bn) const { BN_clear_free(bn); }
};
struct BnCtxFree {
  void operator()(BN_CTX* ctx) const { BN_CTX_free(ctx); }
};
struct PointFree {
  void operator()(EC_POINT* point) const { EC_POINT_clear_free(point); }
};
using Bn = std::unique_ptr<BIGNUM, BnFree>;
using BnCtx = std::unique_ptr<BN_CTX, BnCtxFree>;
using Point = std::unique_ptr<EC_POINT, PointFree>;

Bn NewBn();
BnCtx NewBnCtx();
Point NewPoint();

// The P-256 group and its curve constants, built once (EC_GROUP is safe to share read-only).
struct P256 {
  const EC_GROUP* group;
  const BIGNUM* p;      // field prime
  const BIGNUM* a;      // -3 mod p
  const BIGNUM* b;
  const BIGNUM* order;  // n, the group order (cofactor 1)
};
const P256& Curve();

// SEC1 compressed encoding (33 bytes). Throws InvalidInput for an encoding that is not a point of
// P-256 other than the point at infinity.
std::string EncodePoint(const EC_POINT* point, BN_CTX* ctx);
Point DecodePoint(const std::string& bytes, BN_CTX* ctx);

}  // namespace cleave::psi::detail
