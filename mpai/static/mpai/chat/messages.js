// The message log: user text always as text, assistant replies as sanitised Markdown,
// each reply with Copy, Retry and feedback; notes (Stopped, errors) on the message
// they concern; timestamps on hover (title, local time).

import { addFeedback } from "./feedback.js";
import { copyButton, renderMarkdown } from "./markdown.js";

function localTime(iso) {
  const date = iso ? new Date(iso) : new Date();
  return Number.isNaN(date.getTime()) ? "" : date.toLocaleString();
}

function button(label, onClick, extraClass = "") {
  const element = document.createElement("button");
  element.type = "button";
  element.className = ("mpai-button mpai-button--small " + extraClass).trim();
  element.textContent = label;
  element.addEventListener("click", onClick);
  return element;
}

export class MessageList {
  // options: api, onRetry(question), onNewChat()
  constructor(root, options) {
    this.log = root.querySelector("#mpai-log");
    this.scroller = root.querySelector("#mpai-scroll");
    this.welcome = root.querySelector("#mpai-welcome");
    this.historyStatus = root.querySelector("#mpai-history-status");
    this.options = options;
    this.frames = new Map(); // <li> -> requestAnimationFrame id of a pending render
  }

  clear() {
    this.log.replaceChildren();
    this.historyStatus.textContent = "";
    this.showWelcome(true);
  }

  showWelcome(show) {
    this.welcome.hidden = !show;
  }

  get empty() {
    return this.log.children.length === 0;
  }

  nearBottom() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 80;
  }

  scrollToEnd() {
    this.scroller.scrollTop = this.scroller.scrollHeight;
  }

  item(role, id, createdAt) {
    const li = document.createElement("li");
    li.className = "mpai-msg " + role;
    if (id) li.dataset.message = String(id);
    li.title = (role === "user" ? "You, " : "Assistant, ") + localTime(createdAt);
    const who = document.createElement("span");
    who.className = "mpai-visually-hidden";
    who.textContent = role === "user" ? "You said:" : "Assistant said:";
    const body = document.createElement("div");
    body.className = "mpai-body";
    li.append(who, body);
    return li;
  }

  userItem(text, id, createdAt) {
    const li = this.item("user", id, createdAt);
    li.querySelector(".mpai-body").textContent = text;
    return li;
  }

  assistantItem(row) {
    const li = this.item("assistant", row.id, row.created_at);
    renderMarkdown(li.querySelector(".mpai-body"), row.content);
    this.finish(li, row.status, row.content, true, row.feedback ? row.feedback.rating : null);
    return li;
  }

  rowItem(row) {
    return row.role === "user" ? this.userItem(row.content, row.id, row.created_at) : this.assistantItem(row);
  }

  // Rows of a page, in order, after (append) or before (prepend) what is shown.
  appendRows(rows) {
    for (const row of rows) this.log.append(this.rowItem(row));
    if (rows.length) this.showWelcome(false);
  }

  prependRows(rows) {
    const before = this.scroller.scrollHeight - this.scroller.scrollTop;
    this.log.prepend(...rows.map((row) => this.rowItem(row)));
    this.scroller.scrollTop = this.scroller.scrollHeight - before; // keep the view still
    if (rows.length) this.showWelcome(false);
  }

  addUser(text) {
    this.showWelcome(false);
    const li = this.userItem(text);
    this.log.append(li);
    this.scrollToEnd();
    return li;
  }

  addReply() {
    const li = this.item("assistant");
    li.classList.add("streaming");
    const typing = document.createElement("span");
    typing.className = "mpai-typing";
    typing.setAttribute("role", "img");
    typing.setAttribute("aria-label", "The assistant is typing");
    typing.append(document.createElement("span"), document.createElement("span"), document.createElement("span"));
    li.querySelector(".mpai-body").append(typing);
    this.log.append(li);
    this.scrollToEnd();
    return li;
  }

  // Re-render a growing reply at most once per animation frame.
  setReplyText(li, text) {
    li.dataset.text = text;
    if (this.frames.has(li)) return;
    this.frames.set(
      li,
      requestAnimationFrame(() => {
        this.frames.delete(li);
        this.renderNow(li);
      }),
    );
  }

  renderNow(li) {
    const follow = this.nearBottom();
    renderMarkdown(li.querySelector(".mpai-body"), li.dataset.text || "");
    if (follow) this.scrollToEnd();
  }

  setToolLine(li, text) {
    let line = li.querySelector(".mpai-tool-line");
    if (!line) {
      line = document.createElement("p");
      line.className = "mpai-muted mpai-tool-line";
      li.querySelector(".mpai-body").before(line);
    }
    line.textContent = text;
  }

  // The reply ended (complete, cancelled, error): final text, note, actions.
  // `saved`: a row of the history (not a reply streamed in this page); `rating`: the
  // member's earlier rating of it, from the row.
  finish(li, status, text, saved = false, rating = null) {
    const follow = this.nearBottom(); // still at the end: keep the note and actions in view
    const pending = this.frames.get(li);
    if (pending !== undefined) {
      cancelAnimationFrame(pending);
      this.frames.delete(li);
    }
    li.classList.remove("streaming");
    li.querySelector(".mpai-tool-line")?.remove();
    if (text !== undefined) {
      li.dataset.text = text;
      this.renderNow(li);
    }
    if (status === "cancelled") this.note(li, "Stopped");
    if (status === "error") li.classList.add("error");
    if (status === "error" && !li.querySelector(".mpai-note")) this.note(li, "This reply was interrupted.");
    if (status === "streaming") this.note(li, "This reply is still being written. Reload to see the rest.");
    if (li.querySelector(".mpai-actions") || !li.dataset.message) return;
    const bar = document.createElement("div");
    bar.className = "mpai-actions";
    bar.setAttribute("role", "group");
    bar.setAttribute("aria-label", "Reply actions");
    bar.append(copyButton("Copy", () => li.dataset.text || ""));
    bar.append(button("Retry", () => this.options.onRetry(this.questionOf(li)), "mpai-retry"));
    addFeedback(li, bar, this.options.api, rating);
    li.append(bar);
    if (follow && !saved) this.scrollToEnd();
  }

  questionOf(li) {
    let node = li.previousElementSibling;
    while (node && !node.classList.contains("user")) node = node.previousElementSibling;
    return node ? node.querySelector(".mpai-body").textContent : "";
  }

  // A note under a message: "Stopped", or an error in words with what to do.
  note(li, text, actions = []) {
    li.querySelector(".mpai-note")?.remove();
    const note = document.createElement("p");
    note.className = "mpai-note";
    const words = document.createElement("span");
    words.className = "mpai-note-text";
    words.textContent = text;
    note.append(words, ...actions);
    li.querySelector(".mpai-body").after(note);
    return words;
  }

  actionButton(label, onClick) {
    return button(label, onClick, "mpai-note-action");
  }

  setHistoryStatus(text) {
    this.historyStatus.textContent = text;
  }
}
