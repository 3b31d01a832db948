// How large a value a hospital may send: the bounds on cut activations and on client-model update
// deltas, as configured or, when not configured (0), derived from the model at start. Honest
// values stay far below them; values near float's range, which overflow the server's layers or
// the average, do not.
#pragma once

#include <cstdint>

#include "cleave/core/split_model.h"

namespace cleave::server {

// The activation bound derived from the model: 1000 x the largest cut activation of the initial
// client-side model on a batch of standard-normal inputs (at least 100).
// (`model` by value: it shares the modules, and running them needs a non-const holder.) Without
// a client-side model (a server given only a TorchScript --top): kActivationBoundWithoutBottom.
inline constexpr double kActivationBoundWithoutBottom = 1e6;
double DeriveActivationBound(const ModelSpec& spec, SplitModel model, uint64_t seed);
// The per-value bound on a client-model update: 100 x the largest initial client-side weight
// (at least 1; 1 without a client-side model). An honest round moves a weight by a small
// fraction of that.
double DeriveUpdateBound(const SplitModel& model);

struct ValueBounds {
  double activation_abs = 0;
  double update_abs = 0;
};
// The configured bounds (0: derived as above). Throws UserError for a negative bound.
ValueBounds ResolveValueBounds(ValueBounds configured, const ModelSpec& spec,
                               const SplitModel& model, uint64_t seed);

}  // namespace cleave::server
