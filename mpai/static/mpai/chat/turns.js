// One question and its reply over the websocket, and what survives a dropped
// connection: a message not yet acknowledged by chat.started, or a reply still
// streaming, is sent again with the same client_id once the socket is back. The
// server then answers a resend of a saved message by replaying it (same ids, the whole
// text again), so nothing is sent twice or lost.

import { explainError, toolLine } from "./errors.js";

export function newClientId() {
  if (crypto.randomUUID) return crypto.randomUUID(); // secure contexts only
  return Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 14);
}

export class Turns {
  // chat: {socket, messages, composer, live, conversation, adopt(id, shown), newChat()}
  constructor(chat) {
    this.chat = chat;
    this.pending = null;
  }

  get busy() {
    return this.pending !== null;
  }

  send(text) {
    const { socket, messages, composer, live } = this.chat;
    if (this.pending || !composer.allows(text) || !text.trim()) return false;
    const frame = {
      type: "chat.message",
      conversation: this.chat.conversation,
      content: text,
      client_id: newClientId(),
    };
    this.pending = {
      frame,
      userLi: messages.addUser(text),
      replyLi: messages.addReply(),
      acknowledged: false,
      text: "",
      stopAsked: false,
    };
    composer.set({ busy: true });
    live.textContent = "The assistant is answering…";
    socket.send(frame); // when closed: sent by onOpen after the reconnect
    return true;
  }

  stop() {
    const pending = this.pending;
    if (!pending) return;
    pending.stopAsked = true;
    if (this.chat.socket.open) this.chat.socket.send({ type: "chat.cancel" });
  }

  onOpen() {
    const pending = this.pending;
    if (!pending) return;
    this.chat.socket.send(pending.frame);
    if (pending.stopAsked) this.chat.socket.send({ type: "chat.cancel" });
  }

  onFrame(frame) {
    const pending = this.pending;
    if (!pending) return;
    const { messages } = this.chat;
    switch (frame.type) {
      case "chat.started":
        if (frame.client_id && frame.client_id !== pending.frame.client_id) return;
        this.started(pending, frame);
        break;
      case "chat.delta":
        if (!pending.acknowledged) return;
        pending.text += frame.text;
        messages.setReplyText(pending.replyLi, pending.text);
        break;
      case "chat.tool":
        messages.setToolLine(pending.replyLi, toolLine(frame));
        break;
      case "chat.completed":
        this.completed(pending, frame);
        break;
      case "chat.error":
        this.failed(pending, frame);
        break;
    }
  }

  started(pending, frame) {
    const { messages, composer } = this.chat;
    pending.acknowledged = true;
    pending.userLi.dataset.message = String(frame.user_message);
    pending.replyLi.dataset.message = String(frame.message);
    if (pending.text) {
      // A replay after a reconnect: its deltas bring the whole reply again.
      pending.text = "";
      messages.setReplyText(pending.replyLi, "");
    }
    pending.frame.conversation = frame.conversation;
    composer.clearIf(pending.frame.content);
    this.chat.adopt(frame.conversation, pending.userLi.isConnected);
  }

  end() {
    this.pending = null;
    this.chat.composer.set({ busy: false });
  }

  completed(pending, frame) {
    const { messages, live } = this.chat;
    this.end();
    if (frame.message) pending.replyLi.dataset.message = String(frame.message);
    messages.finish(pending.replyLi, frame.status, pending.text);
    const body = pending.replyLi.querySelector(".mpai-body").textContent;
    live.textContent = frame.status === "cancelled" ? "Reply stopped: " + body : "Assistant: " + body;
  }

  failed(pending, frame) {
    const { messages, composer, live } = this.chat;
    this.end();
    const { text, action, retryAfter } = explainError(frame);
    const question = pending.frame.content;
    const actions = [];
    if (action === "retry") {
      const retry = () => {
        if (!pending.acknowledged && composer.allows(question)) pending.userLi.remove();
        this.send(question);
      };
      actions.push(messages.actionButton("Retry", retry));
    } else if (action === "new") {
      actions.push(messages.actionButton("Start a new chat", () => this.chat.newChat()));
    }
    let target = pending.replyLi;
    let prefix = "";
    if (!pending.acknowledged) {
      // Not accepted: the question was not saved. It goes back into the box.
      pending.replyLi.remove();
      target = pending.userLi;
      target.classList.add("error", "not-sent");
      prefix = "Not sent. ";
      composer.restore(question);
    } else {
      if (frame.message) pending.replyLi.dataset.message = String(frame.message);
      messages.finish(pending.replyLi, "error", pending.text);
      target.dataset.errorCode = frame.code || "";
      if (actions.length) target.querySelector(".mpai-actions .mpai-retry")?.remove(); // one Retry
    }
    const words = messages.note(target, prefix + text, actions);
    target.classList.add("error");
    if (action === "wait") composer.cooldown(retryAfter, words, prefix + text + " ");
    live.textContent = words.textContent;
  }
}
