/**
 * chatkit-gateway.js: the browser side of chatkit-gateway. A dependency-free ES module, served by
 * the gateway at `GET /chatkit-gateway.js`; import it directly, no build step needed.
 *
 * - `createChatKitFetch(options)`: a `fetch` for `useChatKit({api: {url, fetch}})`. It always sends
 *   credentials (the gateway's httpOnly session cookie), adds the page context header
 *   (`X-ChatKit-Page-Context`, base64url of UTF-8 JSON) so the backend learns which page the user
 *   is on, and handles a 401: `refresh()` then one retry, else `onUnauthorized(response)`.
 * - `chatKitFetch`: `createChatKitFetch()` with the defaults.
 * - `getPageContext()`: `{url, title, path, description, headings}` of the current page.
 * - `whenChatKitReady()`: resolves once the `<openai-chatkit>` element is defined.
 *
 * React:
 *
 *     import {useChatKit, ChatKit} from "@openai/chatkit-react";
 *     import {createChatKitFetch} from "https://gateway.example.com/chatkit-gateway.js";
 *
 *     const fetch = createChatKitFetch({onUnauthorized: () => location.assign("/login")});
 *
 *     function Chat({domainKey}) {
 *       const {control} = useChatKit({api: {url: "/chatkit", domainKey, fetch}});
 *       return <ChatKit control={control} className="h-[600px]" />;
 *     }
 *
 * With a token refresh (the retry is made once, with the same body, after `refresh` resolves):
 *
 *     createChatKitFetch({
 *       refresh: () => fetch("/session/refresh", {method: "POST", credentials: "include"}),
 *       onUnauthorized: () => location.assign("/login"),
 *     });
 *
 * Plain web component:
 *
 *     import {chatKitFetch, whenChatKitReady} from "/chatkit-gateway.js";
 *     await whenChatKitReady();
 *     document.querySelector("openai-chatkit").setOptions({api: {url: "/chatkit", domainKey, fetch: chatKitFetch}});
 *
 * When the page is on another origin than the gateway, list that origin in the gateway's
 * `cors.allow_origins` and `security.allowed_origins`; the session cookie must still reach the
 * gateway (same site, `SameSite=Lax` or `None`).
 */

export const PAGE_CONTEXT_HEADER = "X-ChatKit-Page-Context";

const textEncoder = new TextEncoder();

/** Text with runs of white space (line breaks included) made single spaces, trimmed. */
function squash(text) {
  return String(text ?? "").replace(/\s+/g, " ").trim();
}

/**
 * Where the user is: `{url, title, path, description, headings}`, empty values left out.
 * `url` is `location.href` without the query and the fragment (either may carry a token, and the
 * gateway drops both anyway); `headings` lists the text of the first
 * `maxHeadings` h1-h3 elements in document order (the gateway joins them with ", ").
 */
export function getPageContext({maxHeadings = 5} = {}) {
  const context = {};
  const url = new URL(location.href);
  url.search = "";
  url.hash = "";
  context.url = url.href;
  context.title = squash(document.title);
  context.path = location.pathname;
  context.description = squash(document.querySelector('meta[name="description" i]')?.getAttribute("content"));
  const headings = [];
  if (maxHeadings > 0) {
    for (const element of document.querySelectorAll("h1, h2, h3")) {
      const text = squash(element.textContent);
      if (text) headings.push(text);
      if (headings.length >= maxHeadings) break;
    }
  }
  context.headings = headings;
  for (const [key, value] of Object.entries(context)) {
    if (value === "" || (Array.isArray(value) && value.length === 0)) delete context[key];
  }
  return context;
}

/** base64url (no padding) of the UTF-8 bytes of `text`: header-safe for any Unicode. */
function base64url(text) {
  const bytes = textEncoder.encode(text);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** The header value for `pageContext` (a function or an object), or null if there is none or it fails. */
async function pageContextHeader(pageContext) {
  try {
    const context = typeof pageContext === "function" ? await pageContext() : pageContext;
    if (context == null || typeof context !== "object") return null;
    return base64url(JSON.stringify(context));
  } catch {
    // The page context is a nicety: a failure in it never stops the user's request.
    return null;
  }
}

/** Whether `body` can be sent a second time (a stream cannot). */
function isReplayableBody(body) {
  return (
    body == null ||
    typeof body === "string" ||
    body instanceof Blob ||
    body instanceof FormData ||
    body instanceof URLSearchParams ||
    body instanceof ArrayBuffer ||
    ArrayBuffer.isView(body)
  );
}

/**
 * A `fetch(input, init)` for ChatKit's `api.fetch` that talks to chatkit-gateway.
 *
 * @param {object} [options]
 * @param {(() => object | Promise<object>) | object | null} [options.pageContext] what to send in
 *   the page context header: a function called per request (default `getPageContext`), a fixed
 *   object, or null for no header. If it throws, the request goes without the header.
 * @param {string} [options.headerName] the header's name (the gateway's `metadata.page_context_header`).
 *   A header of that name already in the request is kept as it is.
 * @param {(response: Response) => unknown} [options.onUnauthorized] called (and awaited) when the
 *   final answer is a 401, e.g. to send the user to sign in; the 401 is still returned.
 * @param {() => unknown} [options.refresh] called (and awaited) after a first 401; the request is
 *   then made once more. Returning `false` or throwing means "could not refresh": no retry.
 * @param {typeof fetch} [options.fetch] the underlying fetch (default: `globalThis.fetch` at call time).
 * @returns {(input: RequestInfo | URL, init?: RequestInit) => Promise<Response>}
 */
export function createChatKitFetch({
  pageContext = getPageContext,
  headerName = PAGE_CONTEXT_HEADER,
  onUnauthorized,
  refresh,
  fetch: baseFetch,
} = {}) {
  const doFetch = baseFetch ?? ((input, init) => globalThis.fetch(input, init));

  async function send(input, init) {
    // `new Headers(...)` keeps the entries of a Headers instance, which a spread would lose.
    const headers = new Headers(init?.headers ?? (input instanceof Request ? input.headers : undefined));
    if (!headers.has(headerName)) {
      const value = await pageContextHeader(pageContext);
      if (value !== null) headers.set(headerName, value);
    }
    return doFetch(input, {...init, headers, credentials: "include"});
  }

  return async function chatKitGatewayFetch(input, init) {
    // A Request's body can be read once: keep an unread copy for the retry before the first try.
    let again = null;
    if (refresh) {
      if (init?.body != null) {
        again = isReplayableBody(init.body) ? input : null;
      } else if (input instanceof Request) {
        again = input.bodyUsed ? null : input.clone();
      } else {
        again = input;
      }
    }

    let response = await send(input, init);
    if (response.status === 401 && again !== null) {
      let refreshed;
      try {
        refreshed = await refresh();
      } catch {
        refreshed = false;
      }
      if (refreshed !== false) {
        response.body?.cancel().catch(() => {});
        response = await send(again, init);
      }
    }
    if (response.status === 401 && onUnauthorized) {
      await onUnauthorized(response);
    }
    return response;
  };
}

/** `createChatKitFetch()` with the defaults: credentials, page context, no 401 handling. */
export const chatKitFetch = createChatKitFetch();

/**
 * Resolves (with the element's class) once `<openai-chatkit>` is defined, i.e. once ChatKit's
 * script has loaded; rejects with an Error after `timeout` milliseconds.
 */
export function whenChatKitReady({timeout = 10000} = {}) {
  return new Promise((resolve, reject) => {
    if (typeof customElements === "undefined") {
      reject(new Error("custom elements are not supported here"));
      return;
    }
    const timer = setTimeout(
      () => reject(new Error(`openai-chatkit was not defined within ${timeout} ms; is ChatKit's script loaded?`)),
      timeout,
    );
    customElements.whenDefined("openai-chatkit").then(
      (constructor) => {
        clearTimeout(timer);
        resolve(constructor);
      },
      (error) => {
        clearTimeout(timer);
        reject(error);
      },
    );
  });
}
