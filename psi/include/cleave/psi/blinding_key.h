// A party's secret blinding scalar k in [1, n-1] of P-256: the "exponent" of Diffie-Hellman PSI.
// Blinding a point P gives kP; blinding by every party gives (k_1 ... k_N) H(id), the same for an
// id whichever party holds it, and without the keys nobody can tell which id it came from
// (decisional Diffie-Hellman on P-256).
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace cleave::psi {

class BlindingKey {
 public:
  // A fresh key from OpenSSL's private random generator.
  static BlindingKey Random();
  // A key from big-endian bytes (tests); throws InvalidInput unless 1 <= k < n.
  static BlindingKey FromBytes(const std::string& big_endian);

  // Every point (33-byte compressed, as HashToCurve and Blind return them) multiplied by k, order
  // kept. Throws InvalidInput, naming the index, for a point that is not on P-256 or is the point
  // at infinity (a peer's bytes are never trusted).
  std::vector<std::string> Blind(const std::vector<std::string>& points) const;

 private:
  struct Scalar;
  explicit BlindingKey(std::shared_ptr<const Scalar> scalar);
  std::shared_ptr<const Scalar> scalar_;
};

}  // namespace cleave::psi
