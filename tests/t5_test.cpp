// The t5 family's description of T5 checkpoints written by transformers 5.17
// (tests/data/t5_v1_1: gated-GELU, untied, 2 encoder / 3 decoder layers; t5_tied: the
// original ReLU T5 with a tied, rescaled head), and how its steps run: the rows of an
// encoder-decoder step, continuous batching, and what a stage refuses. Parity with
// transformers is checked where users see it: generate_test (one process), cluster_test
// (encoder and decoder on their own stages, the disk tier, pipeline mode), quant_test.
#include <gtest/gtest.h>

#include <map>

#include "stage/family.h"
#include "stage/layers/seq2seq.h"
#include "stage/model.h"
#include "stage/runner.h"
#include "storage/checkpoint.h"
#include "tests/test_util.h"

namespace cascade::stage {
namespace {

ModelDescription describe_fixture(const std::string& name) {
  return describe(*storage::Checkpoint::open(test::fixture(name)));
}

TEST(T5, ConfigAsTransformersWritesIt) {
  const ModelConfig v11 = describe_fixture("t5_v1_1").config;
  EXPECT_EQ(v11.model_type, "t5");
  EXPECT_EQ(v11.hidden_act, "gelu_new");  // "gated-gelu"
  EXPECT_FALSE(v11.tie_word_embeddings);
  EXPECT_EQ(v11.num_layers, 3);  // the decoder's
  EXPECT_EQ(v11.head_dim, 16);
  const ModelConfig tied = describe_fixture("t5_tied").config;
  EXPECT_EQ(tied.hidden_act, "relu");
  EXPECT_TRUE(tied.tie_word_embeddings);
  nlohmann::json bad = v11.json;
  bad["feed_forward_proj"] = "gated-gelu-new";
  EXPECT_THROW_WITH(find_family("t5").parse_config(bad), ModelConfigError, "feed_forward_proj 'gated-gelu-new'");
  bad["feed_forward_proj"] = "gated-tanh";
  EXPECT_THROW_WITH(find_family("t5").parse_config(bad), ModelConfigError, "activation 'tanh'");
}

TEST(T5, ModulesFollowHfDeviceMapNames) {
  const ModelDescription d = describe_fixture("t5_v1_1");
  std::vector<std::string> names;
  for (const auto& m : d.modules) names.push_back(m.name);
  EXPECT_EQ(names, (std::vector<std::string>{"shared", "encoder.block.0", "encoder.block.1", "encoder.final_layer_norm",
                                             "decoder.block.0", "decoder.block.1", "decoder.block.2",
                                             "decoder.final_layer_norm", "lm_head"}));
  EXPECT_EQ(d.modules[1].kind, ModuleKind::kEncoderLayer);
  EXPECT_EQ(d.modules[3].kind, ModuleKind::kEncoderNorm);
  EXPECT_EQ(d.modules[6].kind, ModuleKind::kDecoderLayer);
  EXPECT_EQ(d.modules[6].layer, 2);
  EXPECT_EQ(d.modules[8].tensors, (std::vector<std::string>{"lm_head.weight"}));
  EXPECT_EQ(describe_fixture("t5_tied").modules.back().tensors, (std::vector<std::string>{"shared.weight"}));
}

// Every stored tensor is read by a module, and every tensor a module names is stored;
// each stack's relative-bias table (block 0's) is read by all of its blocks, and the
// encoder/decoder copies of the shared embedding by none.
TEST(T5, ModulesCoverTheCheckpoint) {
  for (const char* name : {"t5_v1_1", "t5_tied"}) {
    auto ck = storage::Checkpoint::open(test::fixture(name));
    const ModelDescription d = describe(*ck);
    std::map<std::string, int> readers;
    for (const auto& m : d.modules)
      for (const auto& t : m.tensors) {
        EXPECT_TRUE(ck->has(t)) << name << ": " << t;
        readers[t]++;
      }
    for (const auto& t : ck->tensor_names()) {
      if (t == "encoder.embed_tokens.weight" || t == "decoder.embed_tokens.weight") continue;
      EXPECT_GE(readers[t], 1) << name << ": " << t;
    }
    const int64_t enc = d.config.json["num_layers"], dec = d.config.num_layers;
    EXPECT_EQ(readers["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"], enc) << name;
    EXPECT_EQ(readers["decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"], dec) << name;
  }
}

// The encoder keeps no cache; a decoder block keeps one K/V pair per position of its
// slot: the encoder's (cross-attention) first, then its own (stage/layers/seq2seq.h).
TEST(T5, DecoderLayersBudgetOneKvPairPerPosition) {
  const ModelDescription d = describe_fixture("t5_v1_1");
  const int64_t kv = d.config.num_heads * d.config.head_dim;
  int layers = 0;
  for (const auto& m : d.modules) {
    if (m.kind != ModuleKind::kEncoderLayer && m.kind != ModuleKind::kDecoderLayer) continue;
    const bool decoder = m.kind == ModuleKind::kDecoderLayer;
    EXPECT_EQ(m.cost.kv_elems_per_token, decoder ? 2 * kv : 0) << m.name;
    EXPECT_GT(m.cost.flops_per_token, 0) << m.name;
    ++layers;
  }
  EXPECT_EQ(layers, 5);
  EXPECT_EQ(d.config.decoder_start_token_id, 0);
  EXPECT_TRUE(d.config.encoder_decoder());
}

TEST(T5, StepRowsSplitEncoderInputFromDecoderTokens) {
  Batch b;
  b.seqs.push_back({2, 0, 4, false, 0, 3});  // a new sequence: 3 encoder tokens, then the start token
  b.seqs.push_back({0, 7, 1, false, 0, 5});  // a decoding one: its token at position 7
  const Seq2SeqRows r = Seq2SeqRows::of(b, at::kCPU);
  EXPECT_EQ(r.enc_tokens, 3);
  EXPECT_EQ(r.dec_tokens, 2);
  EXPECT_TRUE(at::equal(r.enc, at::tensor({0, 1, 2}, at::kLong)));
  EXPECT_TRUE(at::equal(r.dec, at::tensor({3, 4}, at::kLong)));
  ASSERT_EQ(r.seqs.size(), 2u);
  EXPECT_EQ(r.seqs[0].enc_len, 3);
  EXPECT_EQ(r.seqs[0].dec_pos, 3);
  EXPECT_EQ(r.seqs[1].enc_len, 0);
  EXPECT_EQ(r.seqs[1].dec_row, 1);
  EXPECT_EQ(r.seqs[1].dec_pos, 7);
  Batch split;
  split.seqs.push_back({1, 0, 2, false, 0, 3});  // a chunk that cuts the encoder input
  EXPECT_THROW_WITH(Seq2SeqRows::of(split, at::kCPU), c10::Error, "slot 1", "must come whole");
  Batch none;
  none.seqs.push_back({1, 0, 2});
  EXPECT_THROW_WITH(Seq2SeqRows::of(none, at::kCPU), c10::Error, "needs the sequence's encoder input");
  // A step's modules share one set of rows, built by the first that asks.
  StepContext ctx{b, {}, nullptr, {}, {}, {}};
  const Seq2SeqRows& first = Seq2SeqRows::of(ctx, at::kCPU);
  EXPECT_EQ(&Seq2SeqRows::of(ctx, at::kCPU), &first);
  EXPECT_EQ(first.dec_tokens, 2);
}

// Decoder-start logits of `prompt` and of `steps` greedy tokens after it, in `slot` of
// `m`; `other` (slot 1 of the same model), when given, prefills in the same step as
// the first and decodes alongside: a continuous batch.
std::vector<at::Tensor> run(Model& m, const std::vector<int64_t>& prompt, int steps,
                            const std::vector<int64_t>* other = nullptr) {
  const int64_t P = static_cast<int64_t>(prompt.size());
  std::vector<int64_t> ids = prompt, other_ids;
  ids.push_back(0);  // decoder_start_token_id
  Batch b;
  b.seqs.push_back({0, 0, P + 1, false, 0, P});
  if (other) {
    other_ids = *other;
    other_ids.push_back(0);
    b.seqs.push_back({1, 0, static_cast<int64_t>(other_ids.size()), false, 0, static_cast<int64_t>(other->size())});
    ids.insert(ids.end(), other_ids.begin(), other_ids.end());
  }
  std::vector<at::Tensor> out;
  at::Tensor logits = m.forward(at::tensor(ids, at::kLong), b);
  for (int i = 0; i < steps; ++i) {
    out.push_back(logits[0].clone());
    std::vector<int64_t> next = {logits[0].argmax().item<int64_t>()};
    b.seqs[0].start_pos += b.seqs[0].n_tokens;
    b.seqs[0].n_tokens = 1;
    if (other) {
      next.push_back(logits[1].argmax().item<int64_t>());
      b.seqs[1].start_pos += b.seqs[1].n_tokens;
      b.seqs[1].n_tokens = 1;
    }
    logits = m.forward(at::tensor(next, at::kLong), b);
  }
  return out;
}

TEST(T5, ASequenceComputesTheSameAloneOrBatched) {
  auto ck = storage::Checkpoint::open(test::fixture("t5_v1_1"));
  LoadOptions lo;
  lo.runtime.max_batch = 2;
  lo.runtime.max_seq_len = 48;
  auto m = Model::load(ck, lo);
  const std::vector<int64_t> a = {14, 7, 199, 169, 33}, other = {31, 198, 157, 78, 225, 224, 249, 214, 68};
  const auto alone = run(*m, a, 6);
  const auto batched = run(*m, a, 6, &other);
  ASSERT_EQ(alone.size(), batched.size());
  double worst = 0;
  for (size_t i = 0; i < alone.size(); ++i) worst = std::max(worst, (alone[i] - batched[i]).abs().max().item<double>());
  EXPECT_LE(worst, 1e-5);
  // The reference's tokens for this prompt, from the logits alone.
  const auto ref = test::read_json(test::fixture("t5_v1_1") + "/reference.json");
  for (size_t i = 0; i < alone.size(); ++i)
    EXPECT_EQ(alone[i].argmax().item<int64_t>(), ref["prompts"][1]["output_ids"][i].get<int64_t>()) << i;
}

TEST(T5, StagesRefuseStepsOfTheWrongKind) {
  auto load = [](const std::string& name) {
    return std::make_unique<StepRunner>(Model::load(storage::Checkpoint::open(test::fixture(name)), LoadOptions{}));
  };
  comm::StepHeader h;
  h.seqs.resize(1);
  h.seqs[0].n_tokens = 3;
  h.seqs[0].context = 2;
  const at::Tensor ids = at::tensor({5, 6, 0}, at::kLong);
  EXPECT_THROW_WITH(load("llama_gqa")->run(h, ids, 0, -1), c10::Error, "decoder-only model has no encoder input");
  h.seqs[0].context = 0;
  EXPECT_THROW_WITH(load("t5_tied")->run(h, ids, 0, -1), c10::Error, "needs its encoder input");
}

}  // namespace
}  // namespace cascade::stage
