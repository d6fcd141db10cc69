"""searchlite's HTTP API, web page and MCP server. Imports the public API (like cli/), a hit's JSON
from searchlite/output.py and the query rule from query/terms.py, never cli/; keeps fastapi,
uvicorn and mcp out of `import searchlite`: they load when a server starts.

    settings.py  ServerSettings, where thumbnails are cached, which Host headers are ours
    security.py  the ASGI guard: Host check, token, body cap, security headers
    thumbs.py    WebP thumbnails made through the isolated decoder, cached on disk
    responses.py the JSON response class and {"error": ...} answers
    queries.py   a request's terms (text, not, tag, an uploaded image, "more like this") -> hits
    app.py       create_app(): the FastAPI app (JSON API, the page, errors as {"error": ...})
    knn.py       clip-retrieval compatibility: POST /knn-service, GET /indices-list
    run.py       `searchlite serve`: bind, print the URL, run uvicorn
    mcp_tools.py `searchlite mcp`: search, search_by_image, info, classify over stdio
    static/      the page: index.html, app.js, style.css (no CDN, no build step)
"""
