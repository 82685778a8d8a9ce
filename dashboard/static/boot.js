// Loads the dashboard's WebAssembly (a file, not an inline script, so the
// page's Content-Security-Policy can forbid inline scripts).
import init from "./dashboard.js";
init({ module_or_path: new URL("./dashboard_bg.wasm", import.meta.url) });
