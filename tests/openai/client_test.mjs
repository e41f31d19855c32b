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

await check("a wrong API key is an AuthenticationError (401)", async () => {
  const bad = new OpenAI({ baseURL: process.env.CASCADE_BASE_URL, apiKey: "wrong", maxRetries: 0 });
  await assert.rejects(bad.models.list(), (e) => e instanceof OpenAI.AuthenticationError && e.status === 401);
});

console.log(`openai client: ${checks} checks passed`);
