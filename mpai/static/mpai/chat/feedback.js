// Thumbs up/down on an assistant reply, with an optional comment:
// PUT .../messages/<id>/feedback/ {"rating", "comment"?}; DELETE withdraws it.

function ratingButton(rating, label) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "mpai-button mpai-button--small mpai-rate mpai-rate--" + rating;
  button.dataset.rating = rating;
  button.setAttribute("aria-pressed", "false");
  const arrow = document.createElement("span");
  arrow.setAttribute("aria-hidden", "true");
  arrow.textContent = rating === "up" ? "\u25B2 " : "\u25BC ";
  button.append(arrow, label);
  return button;
}

// Adds the rating buttons to `bar`; `item` is the reply's <li> (its data-message).
// `rating`: the member's earlier rating of a reply from the history ("up", "down" or
// null), which the messages API sends with each row.
export function addFeedback(item, bar, api, rating = null) {
  const up = ratingButton("up", "Helpful");
  const down = ratingButton("down", "Not helpful");
  const note = document.createElement("span");
  note.className = "mpai-muted mpai-feedback-note";
  note.setAttribute("role", "status");
  bar.append(up, down, note);
  let current = null;

  function show(rating) {
    current = rating;
    up.setAttribute("aria-pressed", String(rating === "up"));
    down.setAttribute("aria-pressed", String(rating === "down"));
  }

  function commentForm(rating) {
    item.querySelector(".mpai-feedback-form")?.remove();
    const form = document.createElement("form");
    form.className = "mpai-feedback-form";
    const id = "mpai-comment-" + item.dataset.message;
    const label = document.createElement("label");
    label.htmlFor = id;
    label.textContent = rating === "up" ? "What was good? (optional)" : "What went wrong? (optional)";
    const box = document.createElement("textarea");
    box.id = id;
    box.rows = 2;
    box.maxLength = 2000;
    const send = document.createElement("button");
    send.type = "submit";
    send.className = "mpai-button mpai-button--small";
    send.textContent = "Send comment";
    const skip = document.createElement("button");
    skip.type = "button";
    skip.className = "mpai-button mpai-button--small";
    skip.textContent = "No thanks";
    skip.addEventListener("click", () => form.remove());
    form.append(label, box, send, skip);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      try {
        await api.setFeedback(item.dataset.message, rating, box.value.trim());
        note.textContent = "Thanks for your feedback.";
        form.remove();
      } catch {
        note.textContent = "Your comment couldn't be saved. Try again.";
      }
    });
    bar.after(form);
  }

  async function rate(rating) {
    const id = item.dataset.message;
    if (!id) return;
    try {
      if (current === rating) {
        await api.clearFeedback(id);
        show(null);
        note.textContent = "Feedback removed.";
        item.querySelector(".mpai-feedback-form")?.remove();
      } else {
        await api.setFeedback(id, rating);
        show(rating);
        note.textContent = "Thanks!";
        commentForm(rating);
      }
    } catch {
      note.textContent = "Your feedback couldn't be saved. Try again.";
    }
  }

  if (rating) show(rating);

  up.addEventListener("click", () => rate("up"));
  down.addEventListener("click", () => rate("down"));
}
