// HTML for the test provider's login interaction.

export function escapeHtml(text) {
  return String(text)
    .replaceAll('&', '&amp;')
    .replaceAll('<', '&lt;')
    .replaceAll('>', '&gt;')
    .replaceAll('"', '&quot;')
    .replaceAll("'", '&#39;');
}

export function loginPage({ uid, clientId, error }) {
  return `<!DOCTYPE html>
<html>
<head><meta charset="utf-8"><title>ztmesh test IdP: sign in</title></head>
<body>
<h1>Sign in</h1>
<p>to <code>${escapeHtml(clientId)}</code></p>
${error ? `<p class="error" role="alert">${escapeHtml(error)}</p>` : ''}
<form method="post" action="/interaction/${escapeHtml(uid)}/login" autocomplete="off">
  <label>Login <input name="login" autofocus></label><br>
  <label>Password <input name="password" type="password"></label><br>
  <label>One-time code <input name="otp" inputmode="numeric" placeholder="if your account has MFA"></label><br>
  <button type="submit">Sign in</button>
</form>
</body>
</html>
`;
}
