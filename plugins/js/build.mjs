// Builds a JavaScript policy into a shardcar plugin component:
//   node build.mjs <project dir> <out.wasm>
// The project's app.js implements the `shardcar:policy` world and imports
// the SDK as ./shardcar_policy.js (the project's own copy, or the one
// beside this script); the contract is the project's wit/, or else this
// repository's plugins/sdk/wit. componentize-js is resolved from beside
// this script (npm ci there; plugins/js/install.sh here).
import { copyFile, cp, mkdir, mkdtemp, readdir, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const [projectArg, outArg] = process.argv.slice(2);
if (!projectArg || !outArg) {
  console.error("usage: node build.mjs <project dir> <out.wasm>");
  process.exit(2);
}
const [project, out] = [resolve(projectArg), resolve(outArg)];
let componentize;
try {
  ({ componentize } = await import("@bytecodealliance/componentize-js"));
} catch {
  console.error(`componentize-js is not installed: run \`npm ci\` in ${here}`);
  process.exit(2);
}
const own = join(project, "wit");
const wit = await stat(own).then(() => own, () => resolve(here, "../sdk/wit"));
// The engine resolves app.js's imports from the working directory, and
// may read nothing outside it (a symlink out of it fails): the sources
// are staged in a directory of their own, with the SDK.
const staged = await mkdtemp(join(tmpdir(), "shardcar-js-"));
await cp(project, staged, {
  recursive: true,
  filter: (from) => !["node_modules", "target"].includes(basename(from)) && !from.endsWith(".wasm"),
});
const sdk = join(staged, "shardcar_policy.js");
if (!(await stat(sdk).catch(() => null))) await copyFile(join(here, "shardcar_policy.js"), sdk);
process.chdir(staged);
const { component } = await componentize({
  sourcePath: "app.js",
  witPath: wit,
  worldName: "policy",
  // A routing plugin has no I/O: nothing of WASI beyond what the engine needs.
  disableFeatures: ["random", "stdio", "clocks", "http", "fetch-event"],
});
await rm(staged, { recursive: true, force: true });
await mkdir(dirname(out), { recursive: true });
await writeFile(out, component);
// Its test cases go beside it, where shardcar looks for them.
for (const file of await readdir(project)) {
  if (file.endsWith(".tests.toml") && join(project, file) !== out.replace(/\.wasm$/, ".tests.toml")) {
    await copyFile(join(project, file), out.replace(/\.wasm$/, ".tests.toml"));
  }
}
