// The official OpenAI Node.js client against a live `cascade serve` (issue 20): every
// call a local-server user makes, and errors surfacing as the client's own APIError
// subclasses. Run by tests/openai_client_test.sh, which starts the daemon and sets
// CASCADE_BASE_URL, CASCADE_API_KEY and CASCADE_MODEL. Exits non-zero on the first failure.
import assert from "node:assert/strict";
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.env.CASCADE_BASE_URL, apiKey: process.env.CASCADE_API_KEY, maxRetries: 0 });
const model = process.env.CASCADE_MODEL;
let checks = 0;
async function check(name, fn) {
  await fn();
  checks++;
  console.log(`ok - ${name}`);
}

await check("models.list names the model and its context length", async () => {
  const models = await client.models.list();
  assert.equal(models.data[0].id, model);
  assert.equal(models.data[0].max_model_len, 256);
});

let text;
await check("completions.create", async () => {
  const r = await client.completions.create({ model, prompt: "Once upon a time", max_tokens: 8, temperature: 0 });
  assert.equal(r.object, "text_completion");
  text = r.choices[0].text;
  assert.ok(text.length > 0);
  assert.ok(["length", "stop"].includes(r.choices[0].finish_reason));
  assert.ok(r.usage.completion_tokens > 0 && r.usage.completion_tokens <= 8);
});

await check("completions.create streamed equals the non-streamed text, usage at the end", async () => {
  const stream = await client.completions.create({
    model, prompt: "Once upon a time", max_tokens: 8, temperature: 0, stream: true,
    stream_options: { include_usage: true },
  });
  let got = "", usage = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) got += c.text;
  }
  assert.equal(got, text);
  assert.ok(usage && usage.completion_tokens > 0);
});

const messages = [
  { role: "system", content: "You tell stories." },
  { role: "user", content: [{ type: "text", text: "Once upon a time" }] },
];
let content;
await check("chat.completions.create applies the chat template", async () => {
  const r = await client.chat.completions.create({ model, messages, max_tokens: 10, temperature: 0, seed: 7 });
  assert.equal(r.object, "chat.completion");
  assert.equal(r.choices[0].message.role, "assistant");
  content = r.choices[0].message.content;
  assert.equal(typeof content, "string");
  assert.ok(content.length > 0);
});

await check("chat.completions.create streamed gives the same content", async () => {
  const stream = await client.chat.completions.create({ model, messages, max_tokens: 10, temperature: 0, seed: 7, stream: true });
  let got = "", role = null, finish = null;
  for await (const chunk of stream) {
    const d = chunk.choices[0]?.delta ?? {};
    if (d.role) role = d.role;
    if (d.content) got += d.content;
    if (chunk.choices[0]?.finish_reason) finish = chunk.choices[0].finish_reason;
  }
  assert.equal(role, "assistant");
  assert.equal(got, content);
  assert.ok(finish === "length" || finish === "stop");
});

await check("completions: logprobs, echo and n", async () => {
  const r = await client.completions.create({
    model, prompt: "Once upon a time", max_tokens: 4, temperature: 0, logprobs: 2, echo: true, n: 2,
  });
  assert.equal(r.choices.length, 2);
  for (const c of r.choices) {
    assert.ok(c.text.startsWith("Once upon a time"));
    assert.equal(c.text, "Once upon a time" + text.slice(0, c.text.length - 16));  // greedy: the same start
    const lp = c.logprobs;
    assert.equal(lp.tokens.length, lp.token_logprobs.length);
    assert.equal(lp.token_logprobs[0], null);  // the prompt's first token has none
    assert.equal(lp.top_logprobs[0], null);
    for (let i = 1; i < lp.tokens.length; i++) {
      assert.ok(lp.token_logprobs[i] <= 0);
      assert.ok(Object.keys(lp.top_logprobs[i]).length >= 1 && Object.keys(lp.top_logprobs[i]).length <= 3);
    }
  }
  assert.deepEqual(r.choices.map((c) => c.index), [0, 1]);
  assert.ok(r.usage.completion_tokens > 0 && r.usage.completion_tokens <= 8);
});

await check("chat: logprobs with top_logprobs, n sampled choices reproducible with a seed", async () => {
  const ask = () => client.chat.completions.create({
    model, messages, max_tokens: 6, temperature: 1.0, seed: 11, n: 3, logprobs: true, top_logprobs: 2,
  });
  const [a, b] = [await ask(), await ask()];
  assert.equal(a.choices.length, 3);
  assert.deepEqual(a.choices.map((c) => c.message.content), b.choices.map((c) => c.message.content));
  for (const c of a.choices) {
    const content = c.logprobs.content;
    assert.ok(content.length >= 1);
    for (const t of content) {
      assert.equal(typeof t.token, "string");
      assert.ok(Array.isArray(t.bytes) && t.logprob <= 0);
      assert.equal(t.top_logprobs.length, 2);
      assert.ok(t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob);
    }
  }
});

await check("penalties, min_p and logit_bias change what greedy decoding picks", async () => {
  const base = { model, prompt: "Once upon a time", max_tokens: 8, temperature: 0 };
  const r = await client.completions.create({ ...base, logprobs: 0, return_token_ids: true });
  const first = r.choices[0].token_ids?.[0];
  const banned = await client.completions.create({
    ...base, logit_bias: { [String(first)]: -100 }, return_token_ids: true,
  });
  assert.notEqual(banned.choices[0].token_ids[0], first);
  const penalised = await client.completions.create({
    ...base, frequency_penalty: 2, presence_penalty: 2, repetition_penalty: 1.5, min_p: 0.05,
  });
  assert.equal(typeof penalised.choices[0].text, "string");
});

await check("a bad request is a BadRequestError (400) with the server's message", async () => {
  await assert.rejects(
    client.chat.completions.create({ model, messages: [{ role: "wizard", content: "hi" }] }),
    (e) => e instanceof OpenAI.BadRequestError && e.status === 400 && /role 'wizard'/.test(e.message));
});

await check("the template's raise_exception is a 400 with its message", async () => {
  const many = [...messages, { role: "assistant", content: "Yes?" }, { role: "user", content: "More." }];
  await assert.rejects(client.chat.completions.create({ model, messages: many }),
    (e) => e instanceof OpenAI.BadRequestError && /at most three messages/.test(e.message));
});

await check("an out-of-range option is a 400 naming it", async () => {
  await assert.rejects(client.completions.create({ model, prompt: "x", logprobs: 50 }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === "logprobs");
  await assert.rejects(client.completions.create({ model, prompt: "x", n: 9 }),
    (e) => e instanceof OpenAI.BadRequestError && /at most 4 sequences/.test(e.message));
});

await check("a wrong API key is an AuthenticationError (401)", async () => {
  const bad = new OpenAI({ baseURL: process.env.CASCADE_BASE_URL, apiKey: "wrong", maxRetries: 0 });
  await assert.rejects(bad.models.list(), (e) => e instanceof OpenAI.AuthenticationError && e.status === 401);
});

console.log(`openai client: ${checks} checks passed`);
