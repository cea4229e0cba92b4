// Bundles the app into dist/ (app.js, app.css): one script and one style sheet, no CDN,
// nothing fetched at run time. Run by ../build.rs in a copy of this folder.
import * as esbuild from 'esbuild';

await esbuild.build({
  entryPoints: ['src/main.tsx'],
  bundle: true,
  minify: true,
  format: 'iife',
  target: ['es2020'],
  jsx: 'automatic',
  jsxImportSource: 'preact',
  outdir: 'dist',
  entryNames: 'app',
  logLevel: 'warning',
  legalComments: 'none',
});
