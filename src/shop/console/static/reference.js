// The API reference: Swagger UI over this server's OpenAPI document (no CDN, no online validator).
"use strict";

(function () {
  const root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.specUrl,
    dom_id: "#swagger-ui",
    deepLinking: true,
    displayRequestDuration: true,
    validatorUrl: null, // the validator badge would call a service on the internet
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
})();
