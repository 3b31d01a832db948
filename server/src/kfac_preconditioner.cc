#include "cleave/server/kfac_preconditioner.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>

#include <algorithm>
#include <cmath>

#include "cleave/core/error.h"
#include "cleave/core/script_half.h"

namespace cleave::server {

namespace {

bool AllFinite(const at::Tensor& tensor) { return tensor.isfinite().all().item<bool>(); }

std::array<int64_t, 2> Pair(const torch::ExpandingArray<2>& values) {
  return {(*values)[0], (*values)[1]};
}

// The conv's geometry, or false when K-FAC cannot unfold it (groups, "same"/"valid" padding, a
// padding mode other than zeros).
bool ConvGeometryOf(const torch::nn::Conv2dImpl& conv, ConvGeometry* geometry) {
  const auto& options = conv.options;
  const auto* padding = c10::get_if<torch::ExpandingArray<2>>(&options.padding());
  if (padding == nullptr || options.groups() != 1 ||
      !c10::get_if<torch::enumtype::kZeros>(&options.padding_mode())) {
    return false;
  }
  *geometry = {Pair(options.kernel_size()), Pair(options.stride()), Pair(*padding),
               Pair(options.dilation())};
  return true;
}

// The K-FAC layer for `module` (a Linear, or a Conv2d it can unfold), or null.
std::unique_ptr<KfacLayer> LayerFor(torch::nn::Module& module) {
  auto layer = std::make_unique<KfacLayer>();
  layer->module = &module;
  if (auto* linear = module.as<torch::nn::LinearImpl>()) {
    layer->weight = linear->weight;
    layer->bias = linear->bias;
    return layer;
  }
  auto* conv = module.as<torch::nn::Conv2dImpl>();
  if (conv == nullptr || !ConvGeometryOf(*conv, &layer->geometry)) return nullptr;
  layer->conv = true;
  layer->weight = conv->weight;
  layer->bias = conv->bias;
  return layer;
}

// Folds `batch` into the running `factor`, in place.
void FoldIn(const at::Tensor& batch, double decay, at::Tensor& factor) {
  factor.mul_(decay).add_(batch, 1 - decay);
}

// Eigendecomposes `factor` into (vectors, values) in place; false (previous kept) on failure.
bool Decompose(const at::Tensor& factor, at::Tensor& vectors, at::Tensor& values) {
  EigenBasis basis;
  try {
    basis = SymmetricEigen(factor);
  } catch (const c10::Error&) {
    return false;
  }
  if (!AllFinite(basis.vectors) || !AllFinite(basis.values)) return false;
  vectors.copy_(basis.vectors);
  values.copy_(basis.values);
  return true;
}

}  // namespace

void CheckKfacOptions(const KfacOptions& options) {
  CLEAVE_CHECK_USER(options.damping > 0 && std::isfinite(options.damping),
                    "--kfac-damping must be > 0, got ", options.damping);
  CLEAVE_CHECK_USER(options.factor_decay > 0 && options.factor_decay <= 1,
                    "--kfac-factor-decay must be in (0, 1], got ", options.factor_decay);
  CLEAVE_CHECK_USER(options.factor_every >= 1, "--kfac-factor-every must be >= 1, got ",
                    options.factor_every);
  CLEAVE_CHECK_USER(options.inverse_every >= 1, "--kfac-inverse-every must be >= 1, got ",
                    options.inverse_every);
  CLEAVE_CHECK_USER(options.kl_clip > 0 && std::isfinite(options.kl_clip),
                    "--kfac-kl-clip must be > 0, got ", options.kl_clip);
  CLEAVE_CHECK_USER(options.max_dim >= 0, "--kfac-max-dim must be >= 0, got ", options.max_dim);
}

KfacPreconditioner::KfacPreconditioner(torch::nn::Sequential layers, KfacOptions options,
                                       std::shared_ptr<KfacCommunicator> communicator)
    : sequential_(std::move(layers)),
      options_(options),
      communicator_(communicator ? std::move(communicator)
                                 : std::make_shared<LocalKfacCommunicator>()),
      state_(std::make_shared<torch::nn::Module>("KfacState")) {
  CheckKfacOptions(options_);
  CLEAVE_CHECK_USER(FindScriptHalf(*sequential_) == nullptr,
                    "--optimizer kfac needs a built-in top (--model cnn or mlp): the layers of a "
                    "TorchScript top (--top) run inside the script, where K-FAC cannot capture "
                    "their inputs and output gradients");
  steps_ = state_->register_buffer("steps", at::zeros({1}, at::kLong));
  Collect(sequential_, "");
  for (const std::string& left : left_out_) {
    spdlog::warn("K-FAC: layer {} is left to plain SGD with momentum", left);
  }
  CLEAVE_CHECK_USER(!layers_.empty(), "--optimizer kfac: the top has no Linear or Conv2d layer ",
                    "whose factors fit --kfac-max-dim ", options_.max_dim);
}

KfacPreconditioner::~KfacPreconditioner() = default;

void KfacPreconditioner::Collect(const torch::nn::Sequential& sequential,
                                 const std::string& prefix) {
  for (const auto& child : sequential->named_children()) {
    const std::string name = prefix + child.key();
    torch::nn::Module& module = *child.value();
    if (module.as<torch::nn::SequentialImpl>() != nullptr) {
      Collect(torch::nn::Sequential(
                  std::dynamic_pointer_cast<torch::nn::SequentialImpl>(child.value())),
              name + ".");
      continue;
    }
    std::unique_ptr<KfacLayer> layer = LayerFor(module);
    if (!layer) continue;
    layer->name = name;
    const int64_t a_dim = layer->weight.numel() / layer->weight.size(0) + (layer->bias.defined());
    const int64_t g_dim = layer->weight.size(0);
    if (options_.max_dim > 0 && std::max(a_dim, g_dim) > options_.max_dim) {
      left_out_.push_back(detail::Concat(name, " (factors ", a_dim, "x", a_dim, " and ", g_dim, "x",
                                         g_dim, ", over --kfac-max-dim ", options_.max_dim, ")"));
      continue;
    }
    AddLayer(std::move(layer), a_dim, g_dim);
  }
}

// Factors start at the identity (kfac-pytorch's first running average), eigenbases likewise.
void KfacPreconditioner::AddLayer(std::unique_ptr<KfacLayer> layer, int64_t a_dim, int64_t g_dim) {
  const std::string key = "layer" + std::to_string(layers_.size()) + "_";
  const auto options = layer->weight.options().requires_grad(false);
  layer->a = state_->register_buffer(key + "a", at::eye(a_dim, options));
  layer->g = state_->register_buffer(key + "g", at::eye(g_dim, options));
  layer->qa = state_->register_buffer(key + "qa", at::eye(a_dim, options));
  layer->da = state_->register_buffer(key + "da", at::ones({a_dim}, options));
  layer->qg = state_->register_buffer(key + "qg", at::eye(g_dim, options));
  layer->dg = state_->register_buffer(key + "dg", at::ones({g_dim}, options));
  by_module_[layer->module] = layer.get();
  layers_.push_back(std::move(layer));
}

int64_t KfacPreconditioner::steps() const { return steps_.item<int64_t>(); }

at::Tensor KfacPreconditioner::Forward(const at::Tensor& input) {
  for (auto& layer : layers_) {
    layer->input = at::Tensor();
    layer->output_gradient = at::Tensor();
  }
  const bool capture = at::GradMode::is_enabled() && steps() % options_.factor_every == 0;
  return Run(sequential_, input, capture);
}

at::Tensor KfacPreconditioner::Run(torch::nn::Sequential& sequential, at::Tensor x, bool capture) {
  for (size_t i = 0; i < sequential->size(); ++i) {
    const std::shared_ptr<torch::nn::Module> module = sequential->ptr(i);
    if (module->as<torch::nn::SequentialImpl>() != nullptr) {
      torch::nn::Sequential nested(std::dynamic_pointer_cast<torch::nn::SequentialImpl>(module));
      x = Run(nested, x, capture);
      continue;
    }
    const at::Tensor input = x;
    x = sequential->begin()[static_cast<std::ptrdiff_t>(i)].forward(input);
    const auto found = by_module_.find(module.get());
    if (!capture || found == by_module_.end() || !x.requires_grad()) continue;
    KfacLayer* layer = found->second;
    layer->input = input.detach();
    x.register_hook(
        [layer](const at::Tensor& gradient) { layer->output_gradient = gradient.detach(); });
  }
  return x;
}

// Returns the number of layers whose batch factors were skipped (not finite).
int KfacPreconditioner::UpdateFactors() {
  at::NoGradGuard no_grad;
  int skipped = 0;
  std::vector<at::Tensor> factors;
  for (auto& layer : layers_) {
    factors.push_back(layer->a);
    factors.push_back(layer->g);
    if (!layer->input.defined() || !layer->output_gradient.defined()) continue;
    const bool bias = layer->bias.defined();
    const at::Tensor a = layer->conv ? ConvInputFactor(layer->input, layer->geometry, bias)
                                     : LinearInputFactor(layer->input, bias);
    const at::Tensor g = layer->conv ? ConvOutputGradientFactor(layer->output_gradient)
                                     : LinearOutputGradientFactor(layer->output_gradient);
    // Both or neither: a and g of one step belong together.
    if (AllFinite(a) && AllFinite(g)) {
      FoldIn(a, options_.factor_decay, layer->a);
      FoldIn(g, options_.factor_decay, layer->g);
    } else {
      ++skipped;
    }
  }
  communicator_->ReduceFactors(factors);
  return skipped;
}

// Each layer's eigenbases on its owner, then broadcast; returns the layers skipped here.
int KfacPreconditioner::UpdateEigen() {
  at::NoGradGuard no_grad;
  int skipped = 0;
  const int count = static_cast<int>(layers_.size());
  for (int i = 0; i < count; ++i) {
    KfacLayer& layer = *layers_[static_cast<size_t>(i)];
    const int owner = communicator_->EigenOwner(i, count);
    if (owner == communicator_->rank()) {
      at::Tensor qa = layer.qa.clone(), da = layer.da.clone();
      at::Tensor qg = layer.qg.clone(), dg = layer.dg.clone();
      if (Decompose(layer.a, qa, da) && Decompose(layer.g, qg, dg)) {
        layer.qa.copy_(qa);
        layer.da.copy_(da);
        layer.qg.copy_(qg);
        layer.dg.copy_(dg);
      } else {
        ++skipped;
      }
    }
    std::vector<at::Tensor> basis = {layer.qa, layer.da, layer.qg, layer.dg};
    communicator_->Broadcast(basis, owner);
  }
  return skipped;
}

KfacStepReport KfacPreconditioner::Precondition(double learning_rate) {
  KfacStepReport report;
  const int64_t step = steps();
  if (step % options_.factor_every == 0) {
    report.factors_skipped = UpdateFactors();
    report.factors_updated = true;
  }
  if (step % options_.inverse_every == 0) {
    report.eigen_skipped = UpdateEigen();
    report.eigen_updated = true;
  }
  at::NoGradGuard no_grad;
  std::vector<std::pair<KfacLayer*, at::Tensor>> preconditioned;
  double dot = 0;
  for (auto& layer : layers_) {
    at::Tensor weight_grad = layer->weight.grad();
    if (!weight_grad.defined()) continue;
    const at::Tensor bias_grad = layer->bias.defined() ? layer->bias.grad() : at::Tensor();
    const at::Tensor gradient = GradientMatrix(weight_grad, bias_grad);
    const at::Tensor result = PreconditionWithEigen(gradient, {layer->qa, layer->da},
                                                    {layer->qg, layer->dg}, options_.damping);
    const double layer_dot = (result * gradient).sum().item<double>();
    if (!AllFinite(result) || !std::isfinite(layer_dot)) {
      ++report.gradients_skipped;
      continue;
    }
    dot += layer_dot;
    preconditioned.emplace_back(layer.get(), result);
  }
  report.kl_scale = KlClipScale(dot, learning_rate, options_.kl_clip);
  for (auto& [layer, result] : preconditioned) {
    at::Tensor weight_grad = layer->weight.grad();
    at::Tensor bias_grad = layer->bias.defined() ? layer->bias.grad() : at::Tensor();
    SetGradients(result * report.kl_scale, weight_grad, bias_grad);
  }
  for (auto& layer : layers_) {
    layer->input = at::Tensor();
    layer->output_gradient = at::Tensor();
  }
  steps_.add_(1);
  return report;
}

}  // namespace cleave::server
