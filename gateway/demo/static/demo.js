/**
 * demo.js: the demo page's chat. It speaks the ChatKit protocol itself, because ChatKit's own web
 * component loads from OpenAI's CDN and cannot run here. A real app uses `useChatKit` instead and
 * passes it the same `fetch` (see docs/demo.md).
 *
 * - The first message creates a thread (`threads.create`), later ones add to it
 *   (`threads.add_user_message`). Both answer with a server-sent event stream.
 * - The stream is read as it arrives: each `assistant_message.content_part.text_delta` is appended
 *   to the visible reply at once.
 * - `createChatKitFetch` (from the gateway) sends the httpOnly cookie and the page context header;
 *   on a 401 it calls `onUnauthorized`, which asks the user to sign in.
 * - "Someone else's thread" opens any thread id (`threads.get_by_id`): another user's gets the
 *   gateway's 404, whatever the backend's store would have answered.
 */

import {createChatKitFetch, getPageContext} from "/chatkit-gateway.js";

const CHATKIT_URL = "/chatkit";

const messages = document.getElementById("messages");
const composer = document.getElementById("composer");
const messageInput = document.getElementById("message");
const sendButton = document.getElementById("send");
const signInPrompt = document.getElementById("signin-prompt");
const received = document.getElementById("received");
const sent = document.getElementById("sent");
const threadIdShown = document.getElementById("thread-id");
const openForm = document.getElementById("open-form");
const openInput = document.getElementById("open-id");
const opened = document.getElementById("opened");

const chatFetch = createChatKitFetch({
  onUnauthorized: () => {
    signInPrompt.hidden = false;
    document.getElementById("username")?.focus();
  },
});

// The thread this page is talking in; a reload (signing in or out is one) starts a new one.
let threadId = null;

composer.addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = messageInput.value.trim();
  if (!text) return;
  messageInput.value = "";
  sendButton.disabled = true;
  try {
    await send(text);
  } catch (error) {
    append("error", `Could not send: ${error.message}`);
  } finally {
    sendButton.disabled = false;
    messageInput.focus();
  }
});

/** Send one user message and show the answer as it streams in. */
async function send(text) {
  const input = {content: [{type: "input_text", text}], attachments: [], quoted_text: "", inference_options: {}};
  const request =
    threadId === null
      ? {type: "threads.create", params: {input}}
      : {type: "threads.add_user_message", params: {thread_id: threadId, input}};
  const body = JSON.stringify(request);
  showSent(request);
  const mine = append("user", text);

  const response = await chatFetch(CHATKIT_URL, {method: "POST", headers: {"content-type": "application/json"}, body});
  if (response.status === 401) {
    mine.classList.add("refused");
    return; // onUnauthorized has shown the sign-in prompt
  }
  if (!response.ok) {
    const problem = await response.json().catch(() => null);
    throw new Error(problem?.error?.message ?? `HTTP ${response.status}`);
  }
  signInPrompt.hidden = true;

  let reply = null;
  for await (const event of serverSentEvents(response)) {
    switch (event.type) {
      case "thread.created":
        threadId = event.thread.id;
        threadIdShown.textContent = threadId;
        break;
      case "client_effect":
        if (event.name === "demo.context") received.textContent = JSON.stringify(event.data, null, 2);
        break;
      case "thread.item.added":
        if (event.item.type === "assistant_message") reply = append("assistant", "");
        break;
      case "thread.item.updated":
        if (reply && event.update.type === "assistant_message.content_part.text_delta") {
          reply.textContent += event.update.delta;
        }
        break;
      case "thread.item.done":
        if (reply && event.item.type === "assistant_message") {
          reply.textContent = event.item.content.map((part) => part.text).join("");
          reply.dataset.done = "true";
        }
        break;
      case "error":
        append("error", event.message ?? "The assistant could not answer.");
        break;
    }
  }
}

openForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const request = {type: "threads.get_by_id", params: {thread_id: openInput.value.trim()}};
  const response = await chatFetch(CHATKIT_URL, {
    method: "POST",
    headers: {"content-type": "application/json"},
    body: JSON.stringify(request),
  });
  const answer = await response.json().catch(() => null);
  const shown = response.ok ? {id: answer?.id, title: answer?.title, items: answer?.items?.data?.length} : answer;
  opened.textContent = `HTTP ${response.status}\n${JSON.stringify(shown, null, 2)}`;
});

/**
 * The JSON events of a ChatKit stream, each as soon as its frame is complete. Frames are
 * `data: <json>` lines ended by a blank line (ChatKit writes `\n` line ends); chunks may split a
 * frame anywhere.
 */
async function* serverSentEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, {stream: true});
    let end;
    while ((end = buffer.indexOf("\n\n")) !== -1) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = frame
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""))
        .join("\n");
      if (data) yield JSON.parse(data);
    }
  }
}

/** Show what left the browser: the request body, the page context header, and the cookie. */
function showSent(request) {
  sent.textContent = [
    `POST ${CHATKIT_URL}`,
    JSON.stringify(request),
    "",
    "X-ChatKit-Page-Context: base64url of",
    JSON.stringify(getPageContext()),
    "",
    "Cookie: auth_token=... (httpOnly: added by the browser, unreadable here)",
  ].join("\n");
}

function append(role, text) {
  const item = document.createElement("li");
  item.className = `message ${role}`;
  item.textContent = text;
  messages.append(item);
  item.scrollIntoView({block: "nearest"});
  return item;
}
