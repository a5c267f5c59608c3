// Start Swagger UI on /docs with the hub's own OpenAPI document. Kept out of the page so
// that the page's Content-Security-Policy needs no inline script.
"use strict";
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  // the default validator badge is an image from validator.swagger.io
  validatorUrl: null,
});
