// The REST API of mpai as the widget uses it: URLs from the widget's data- attributes,
// same-origin fetches with the CSRF token on writes, JSON in and out.

export class ApiError extends Error {
  constructor(status, body) {
    super("HTTP " + status);
    this.status = status;
    this.body = body;
  }
}

function csrfCookie() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

export class Api {
  constructor(root) {
    const data = root.dataset;
    this.placeholder = data.urlId;
    this.conversationsUrl = data.conversationsUrl;
    this.conversationUrl = data.conversationUrl;
    this.messagesUrl = data.messagesUrl;
    this.feedbackUrl = data.feedbackUrl;
    this.searchUrl = data.searchUrl;
    this.csrfToken = data.csrfToken || csrfCookie();
  }

  withId(template, id) {
    return template.replace(this.placeholder, String(Number(id)));
  }

  async request(method, url, body) {
    const headers = { Accept: "application/json" };
    if (method !== "GET") headers["X-CSRFToken"] = this.csrfToken || csrfCookie();
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(url, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = response.status === 204 ? "" : await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  // Cursor pages: {"next", "previous", "results"}; next/previous are absolute URLs.
  conversations(pageUrl) {
    return this.request("GET", pageUrl || this.conversationsUrl);
  }

  conversation(id) {
    return this.request("GET", this.withId(this.conversationUrl, id));
  }

  rename(id, title) {
    return this.request("PATCH", this.withId(this.conversationUrl, id), { title });
  }

  remove(id) {
    return this.request("DELETE", this.withId(this.conversationUrl, id));
  }

  // A conversation's messages come oldest first. `?cursor=last` is the newest page: its
  // results are still in order and its `previous` link leads to the older pages, `null`
  // at the start.
  newestMessages(id) {
    return this.request("GET", this.withId(this.messagesUrl, id) + "?cursor=last");
  }

  firstMessages(id) {
    return this.request("GET", this.withId(this.messagesUrl, id));
  }

  page(url) {
    return this.request("GET", url);
  }

  search(q) {
    return this.request("GET", this.searchUrl + "?q=" + encodeURIComponent(q));
  }

  setFeedback(messageId, rating, comment) {
    const body = comment ? { rating, comment } : { rating };
    return this.request("PUT", this.withId(this.feedbackUrl, messageId), body);
  }

  clearFeedback(messageId) {
    return this.request("DELETE", this.withId(this.feedbackUrl, messageId));
  }
}
