"""The page (origin A): its script calls the API on origin B with a bearer token.

``callApi(url, token)`` fetches ``url`` with ``Authorization: Bearer <token>``
(no header when ``token`` is empty) and shows what the page could read in
``#result``: ``{"status": ..., "body": ...}``, or ``{"error": ...}`` when the
browser withheld the response (a network error, as a CORS failure looks to a page).
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

PAGE = """<!doctype html>
<html>
<head><meta charset="utf-8"><title>orders</title></head>
<body>
<pre id="result"></pre>
<script>
async function callApi(url, token) {
  const headers = token ? {Authorization: "Bearer " + token} : {};
  let shown;
  try {
    const response = await fetch(url, {headers});
    shown = {status: response.status, body: await response.json()};
  } catch (error) {
    shown = {error: error.name + ": " + error.message};
  }
  const result = document.getElementById("result");
  result.textContent = JSON.stringify(shown);
  return result.textContent;
}
</script>
</body>
</html>
"""


async def page(request: Request) -> HTMLResponse:
    return HTMLResponse(PAGE)


app = Starlette(routes=[Route("/", page)])
