// What a chat.error frame means for the member: words, and what they can do.
// action: "retry" (send the question again), "wait" (a countdown of retry_after
// seconds, then Send again), "new" (start a new chat), "edit" (change the text), or "".

const UNAVAILABLE = "The assistant is unavailable right now. Try again in a moment.";

const EXPLANATIONS = {
  invalid_json: ["Something went wrong sending your message. Reload the page and try again.", "retry"],
  unknown_type: ["Something went wrong sending your message. Reload the page and try again.", "retry"],
  invalid_message: ["This message can't be sent. Check it for unusual characters and try again.", "edit"],
  message_too_long: ["Your message is too long. Shorten it and send it again.", "edit"],
  conversation_not_found: ["This chat no longer exists. Start a new chat to go on.", "new"],
  rate_limited: ["You're sending messages quickly.", "wait"],
  quota_exceeded: ["You've reached your message allowance for now.", "wait"],
  overloaded: ["The assistant is very busy right now.", "wait"],
  busy: ["The assistant is still answering your previous message. Wait for it to finish.", ""],
  provider_rate_limited: [UNAVAILABLE, "retry"],
  provider_timeout: [UNAVAILABLE, "retry"],
  provider_unavailable: [UNAVAILABLE, "retry"],
  provider_error: [UNAVAILABLE, "retry"],
  provider_auth: ["The assistant isn't set up correctly. Please tell the site's team.", ""],
  context_length_exceeded: ["This chat has become too long for the assistant. Start a new chat to go on.", "new"],
  provider_bad_request: ["The assistant couldn't answer this message. Try asking it differently.", "edit"],
  tool_iterations_exceeded: ["The assistant couldn't finish looking this up. Try asking more simply.", "retry"],
  internal_error: ["Something went wrong on our side. Try again in a moment.", "retry"],
};

export function explainError(frame) {
  const [text, action] = EXPLANATIONS[frame.code] || [
    "Something went wrong. Try again in a moment.",
    "retry",
  ];
  const retryAfter = Number(frame.retry_after);
  if (action === "wait" && !(retryAfter > 0)) return { text: text + " Try again in a moment.", action: "retry" };
  return { text, action, retryAfter: action === "wait" ? Math.ceil(retryAfter) : 0 };
}

// "12 s", "4 min 5 s", "2 h 10 min": a countdown's remaining time.
export function formatWait(seconds) {
  if (seconds < 60) return seconds + " s";
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return minutes + " min " + (seconds % 60) + " s";
  return Math.floor(minutes / 60) + " h " + (minutes % 60) + " min";
}

// Short status lines for chat.tool frames.
const TOOL_LINES = {
  get_my_memberships: "Looking up your membership…",
  list_plans: "Looking up the plans…",
  search_help_articles: "Searching the help articles…",
  get_membership: "Looking up your membership…",
  membership_status: "Looking up your membership…",
  lookup_membership: "Looking up your membership…",
  get_subscriptions: "Checking your subscriptions…",
  list_invoices: "Checking your invoices…",
  get_invoices: "Checking your invoices…",
  search_content: "Searching the site…",
  search_docs: "Searching the help pages…",
  get_plans: "Looking up the plans…",
};

export function toolLine(frame) {
  if (frame.status === "error") return "Couldn't look that up; carrying on…";
  return TOOL_LINES[frame.name] || (/member/i.test(frame.name || "") ? "Looking up your membership…" : "Working…");
}
