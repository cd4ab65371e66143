import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Hono } from 'hono';
import type { Env } from '../context.js';

const CSP = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/**
 * The web dashboard at /dashboard: static files from the package's dashboard/ folder and
 * uPlot from its npm package, all served here (no external network). The page talks to
 * the admin API with the admin key it keeps in the tab's sessionStorage.
 */
export function dashboardRoutes(): Hono<Env> {
  const app = new Hono<Env>();
  const dir = findDashboardDir();
  const uplot = path.dirname(createRequire(import.meta.url).resolve('uplot/dist/uPlot.iife.min.js'));
  const files: Record<string, [string, string]> = {
    '/dashboard': [path.join(dir, 'index.html'), 'text/html; charset=utf-8'],
    '/dashboard/': [path.join(dir, 'index.html'), 'text/html; charset=utf-8'],
    '/dashboard/app.js': [path.join(dir, 'app.js'), 'text/javascript; charset=utf-8'],
    '/dashboard/ui.js': [path.join(dir, 'ui.js'), 'text/javascript; charset=utf-8'],
    '/dashboard/key.js': [path.join(dir, 'key.js'), 'text/javascript; charset=utf-8'],
    '/dashboard/windows.js': [path.join(dir, 'windows.js'), 'text/javascript; charset=utf-8'],
    '/dashboard/webhooks.js': [path.join(dir, 'webhooks.js'), 'text/javascript; charset=utf-8'],
    '/dashboard/models.js': [path.join(dir, 'models.js'), 'text/javascript; charset=utf-8'],
    '/dashboard/charts.js': [path.join(dir, 'charts.js'), 'text/javascript; charset=utf-8'],
    '/dashboard/app.css': [path.join(dir, 'app.css'), 'text/css; charset=utf-8'],
    '/dashboard/uplot.js': [path.join(uplot, 'uPlot.iife.min.js'), 'text/javascript; charset=utf-8'],
    '/dashboard/uplot.css': [path.join(uplot, 'uPlot.min.css'), 'text/css; charset=utf-8'],
  };
  for (const [route, [file, type]] of Object.entries(files)) {
    const body = fs.readFileSync(file);
    app.get(route, (c) => {
      c.header('content-type', type);
      c.header('content-security-policy', CSP);
      c.header('x-content-type-options', 'nosniff');
      c.header('referrer-policy', 'no-referrer');
      c.header('cache-control', 'no-cache');
      return c.body(body);
    });
  }
  return app;
}

/** dashboard/ sits at the package root: above src/server, dist/, or a test bundle's folder. */
function findDashboardDir(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    const candidate = path.join(dir, 'dashboard');
    if (fs.existsSync(path.join(candidate, 'index.html'))) return candidate;
    dir = path.dirname(dir);
  }
  throw new Error('the dashboard files (dashboard/index.html) are missing from the agentkey package');
}
