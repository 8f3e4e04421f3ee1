"use strict";
// Trades the API key for the session cookie (HttpOnly: this script never sees it), then loads the console.
document.getElementById("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const error = document.getElementById("login-error");
  error.textContent = "";
  const key = document.getElementById("key").value;
  const response = await fetch("/console/login", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ key }),
    credentials: "same-origin",
  });
  if (response.status === 204) {
    window.location.replace("/console" + window.location.hash);
    return;
  }
  const body = await response.json().catch(() => ({}));
  error.textContent = (body.error && body.error.message) || "sign-in failed (" + response.status + ")";
});
