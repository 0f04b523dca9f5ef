// The official OpenAI Node SDK against the relay: `node openai.mjs <case>` prints one JSON object
// that tests/e2e/test_node_clients.py compares exactly with what the fake upstream sent.
// The base URL ends in /v1, as for every OpenAI-compatible client.
import OpenAI from "openai";

const client = new OpenAI({
  baseURL: `${process.env.RELAY_URL}/v1`,
  apiKey: "unused",
  maxRetries: 0, // a retry would hide a failed first attempt from the test
});
const model = "default";
const weather = {
  type: "function",
  function: {
    name: "get_weather",
    description: "Current weather for a city.",
    parameters: {
      type: "object",
      properties: { city: { type: "string" } },
      required: ["city"],
    },
  },
};

function summary(completion) {
  const choice = completion.choices[0];
  return {
    object: completion.object,
    model: completion.model,
    finish_reason: choice.finish_reason,
    message: choice.message,
    usage: completion.usage,
  };
}

const cases = {
  async text() {
    const completion = await client.chat.completions.create({
      model,
      messages: [{ role: "user", content: "node text" }],
    });
    return summary(completion);
  },

  async stream() {
    const deltas = [];
    let finish = null;
    let usage = null;
    const stream = await client.chat.completions.create({
      model,
      messages: [{ role: "user", content: "node stream" }],
      stream: true,
      stream_options: { include_usage: true },
    });
    for await (const chunk of stream) {
      if (chunk.usage) usage = chunk.usage;
      const choice = chunk.choices[0];
      if (!choice) continue;
      if (choice.delta.content) deltas.push(choice.delta.content);
      if (choice.finish_reason) finish = choice.finish_reason;
    }
    return { deltas, finish_reason: finish, usage };
  },

  // The caller runs the tool: the first call ends in tool_calls, the second sends a `tool`
  // message back in a stateless history, and the relay hands it to the claude parked in the call.
  async tools() {
    const messages = [{ role: "user", content: "node weather?" }];
    const first = await client.chat.completions.create({ model, messages, tools: [weather] });
    const message = first.choices[0].message;
    const call = message.tool_calls[0];
    const args = JSON.parse(call.function.arguments);
    messages.push(message);
    messages.push({ role: "tool", tool_call_id: call.id, content: `sunny in ${args.city}` });
    const final = await client.chat.completions.create({ model, messages, tools: [weather] });
    return { first: summary(first), final: summary(final) };
  },

  // The same round trip with the first call streamed: tool-call deltas assembled by the SDK.
  async stream_tools() {
    const messages = [{ role: "user", content: "node streamed weather?" }];
    const runner = client.chat.completions.stream({ model, messages, tools: [weather] });
    const first = await runner.finalChatCompletion();
    const message = first.choices[0].message;
    const call = message.tool_calls[0];
    messages.push({ role: "assistant", content: message.content, tool_calls: message.tool_calls });
    messages.push({ role: "tool", tool_call_id: call.id, content: "rainy, 12 C" });
    const final = await client.chat.completions.create({ model, messages, tools: [weather] });
    return { first: summary(first), final: summary(final) };
  },
};

const name = process.argv[2];
if (!(name in cases)) {
  console.error(`usage: node openai.mjs ${Object.keys(cases).join("|")}`);
  process.exit(2);
}
console.log(JSON.stringify(await cases[name]()));
