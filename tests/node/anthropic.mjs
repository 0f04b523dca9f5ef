// The official Anthropic Node SDK against the relay: `node anthropic.mjs <case>` prints one JSON
// object that tests/e2e/test_node_clients.py compares exactly with what the fake upstream sent.
// The base URL is the relay's root (no /v1), as for the Python SDK.
import Anthropic from "@anthropic-ai/sdk";

const client = new Anthropic({
  baseURL: process.env.RELAY_URL,
  apiKey: "unused",
  maxRetries: 0, // a retry would hide a failed first attempt from the test
});
const model = "default";
const weather = {
  name: "get_weather",
  description: "Current weather for a city.",
  input_schema: {
    type: "object",
    properties: { city: { type: "string" } },
    required: ["city"],
  },
};

function summary(msg) {
  return {
    id: msg.id,
    model: msg.model,
    stop_reason: msg.stop_reason,
    content: msg.content,
    usage: { input_tokens: msg.usage.input_tokens, output_tokens: msg.usage.output_tokens },
  };
}

const cases = {
  async text() {
    const msg = await client.messages.create({
      model,
      max_tokens: 200,
      messages: [{ role: "user", content: "node text" }],
    });
    return summary(msg);
  },

  async stream() {
    const events = [];
    const deltas = [];
    const stream = client.messages.stream({
      model,
      max_tokens: 200,
      messages: [{ role: "user", content: "node stream" }],
    });
    stream.on("streamEvent", (event) => events.push(event.type));
    stream.on("text", (delta) => deltas.push(delta));
    const final = await stream.finalMessage();
    return { events, deltas, final: summary(final) };
  },

  // The caller runs the tool: the first call ends in tool_use, the second sends its result
  // back in a stateless history, and the relay hands it to the claude parked in the call.
  async tools() {
    const messages = [{ role: "user", content: "node weather?" }];
    const first = await client.messages.create({ model, max_tokens: 200, tools: [weather], messages });
    const use = first.content.find((block) => block.type === "tool_use");
    messages.push({ role: "assistant", content: first.content });
    messages.push({
      role: "user",
      content: [{ type: "tool_result", tool_use_id: use.id, content: `sunny in ${use.input.city}` }],
    });
    const final = await client.messages.create({ model, max_tokens: 200, tools: [weather], messages });
    return { first: summary(first), final: summary(final) };
  },
};

const name = process.argv[2];
if (!(name in cases)) {
  console.error(`usage: node anthropic.mjs ${Object.keys(cases).join("|")}`);
  process.exit(2);
}
console.log(JSON.stringify(await cases[name]()));
