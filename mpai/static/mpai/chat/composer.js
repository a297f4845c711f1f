// The message box: Enter sends, Shift+Enter adds a line, Escape stops a reply; a live
// character counter (Send is off past MAX_MESSAGE_LENGTH); a countdown after
// "rate_limited" and the like, with Send off until it ends.

import { formatWait } from "./errors.js";

const numbers = new Intl.NumberFormat();
const DRAFT_KEY = "mpai.draft"; // the unsent text survives a reload of the tab

function saveDraft(text) {
  try {
    if (text) sessionStorage.setItem(DRAFT_KEY, text);
    else sessionStorage.removeItem(DRAFT_KEY);
  } catch {
    // storage off: the draft lives as long as the page
  }
}

function savedDraft() {
  try {
    return sessionStorage.getItem(DRAFT_KEY) || "";
  } catch {
    return "";
  }
}

export function characters(text) {
  return [...text].length; // code points, as the server counts them
}

export class Composer {
  // options: maxLength, onSend(text), onStop()
  constructor(root, options) {
    this.options = options;
    this.form = root.querySelector("#mpai-form");
    this.input = root.querySelector("#mpai-input");
    this.send = root.querySelector("#mpai-send");
    this.stop = root.querySelector("#mpai-stop");
    this.counter = root.querySelector("#mpai-counter");
    this.cooldownLine = root.querySelector("#mpai-cooldown");
    this.connected = false;
    this.busy = false;
    this.wasOver = false;
    this.waitUntil = 0;
    this.waitTimer = null;
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    this.input.value = this.input.value || savedDraft();
    this.input.addEventListener("input", () => {
      saveDraft(this.input.value);
      this.update();
    });
    this.input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.submit();
      }
    });
    this.stop.addEventListener("click", () => options.onStop());
    root.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && this.busy) {
        event.preventDefault();
        options.onStop();
      }
    });
    this.update();
  }

  get coolingDown() {
    return this.waitUntil > Date.now();
  }

  get canSend() {
    return this.allows(this.input.value);
  }

  // Whether `text` may go out now (the box's text, a suggestion, a retried question).
  allows(text) {
    return (
      this.connected && !this.busy && !this.coolingDown && characters(text) <= this.options.maxLength
    );
  }

  submit() {
    // A disabled Send does not stop Enter: a second message while one streams would
    // be refused as "busy"; the text waits in the box.
    const text = this.input.value;
    if (!this.canSend || !text.trim()) return;
    this.options.onSend(text);
  }

  set(state) {
    Object.assign(this, state);
    this.update();
  }

  update() {
    const length = characters(this.input.value);
    const max = this.options.maxLength;
    const over = length > max;
    this.counter.hidden = length < max * 0.8;
    this.counter.textContent = `${numbers.format(length)} / ${numbers.format(max)}`;
    this.counter.title = "Characters used / allowed";
    this.counter.classList.toggle("mpai-counter--over", over);
    if (over !== this.wasOver && !this.coolingDown) {
      this.cooldownLine.textContent = over ? "Too long to send: shorten your message." : "";
    }
    this.wasOver = over;
    this.input.setAttribute("aria-invalid", String(over));
    this.send.disabled = !this.canSend;
    this.stop.disabled = !this.busy;
  }

  // Keep Send off for `seconds`, counting down in `line` (and the form's own line).
  cooldown(seconds, line, prefix) {
    clearInterval(this.waitTimer);
    this.waitUntil = Date.now() + seconds * 1000;
    const tick = () => {
      const left = Math.ceil((this.waitUntil - Date.now()) / 1000);
      if (left <= 0) {
        clearInterval(this.waitTimer);
        this.waitUntil = 0;
        line.textContent = prefix + "You can send a message again now.";
        this.cooldownLine.textContent = "";
      } else {
        line.textContent = `${prefix}You can send another message in ${formatWait(left)}.`;
        this.cooldownLine.textContent = `Wait ${formatWait(left)}`;
      }
      this.update();
    };
    tick();
    this.waitTimer = setInterval(tick, 1000);
  }

  clearIf(text) {
    if (this.input.value === text) {
      this.input.value = "";
      saveDraft("");
      this.update();
    }
  }

  restore(text) {
    if (!this.input.value.trim()) this.input.value = text;
    saveDraft(this.input.value);
    this.update();
  }

  focus() {
    this.input.focus();
  }
}
