// Hashing sample ids to points of P-256: RFC 9380 hash_to_curve with the suite
// P256_XMD:SHA-256_SSWU_RO_ (expand_message_xmd with SHA-256, two field elements, the simplified
// SWU map with Z = -10, their sum; P-256 has cofactor 1). Chosen over try-and-increment because it
// is the standard (test vectors in RFC 9380 Appendix J.1.1 pin it down), its output is
// indistinguishable from a random point (a random oracle, which the DH-PSI security argument
// assumes), and its running time does not depend on the id. This implementation uses OpenSSL's
// BIGNUM arithmetic and is not constant-time; what it hashes are the party's own ids, on its own
// machine.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace cleave::psi {

inline constexpr size_t kPointBytes = 33;  // SEC1 compressed P-256 point

// The domain separation tag of cleave's PSI (RFC 9380 section 3.1: application, version, suite).
inline constexpr std::string_view kPsiDomain = "CLEAVE-PSI-V01-CS02-with-P256_XMD:SHA-256_SSWU_RO_";

// expand_message_xmd with SHA-256 (RFC 9380 section 5.3.1). Throws InvalidInput if dst is empty
// or over 255 bytes or length over 8160.
std::string ExpandMessageXmd(std::string_view message, std::string_view dst, size_t length);

// hash_to_curve(message) as a 33-byte compressed point.
std::string HashToCurve(std::string_view message, std::string_view dst = kPsiDomain);

// The affine coordinates of a compressed point, as 64 lowercase hex digits each (for tests).
void PointCoordinatesHex(const std::string& point, std::string* x, std::string* y);

}  // namespace cleave::psi
