import { Ajv2020, type ValidateFunction } from 'ajv/dist/2020.js';
import { expect } from 'vitest';
import type { Reply } from './service.js';

/** The parts of an OpenAPI 3.1 document the contract reads. */
export interface OpenApiDoc {
  paths: Record<string, Record<string, Operation>>;
  components: { schemas: Record<string, unknown> };
}

interface Operation {
  operationId?: string;
  security?: unknown;
  requestBody?: unknown;
  responses: Record<string, { headers?: Record<string, unknown>; content?: Record<string, { schema: unknown }> }>;
}

/**
 * Holds real answers of the service against its OpenAPI document, with ajv (JSON Schema
 * 2020-12, the dialect of OpenAPI 3.1) over the document's own schemas, as a generated
 * client would read them: the path and method are documented (or the answer is the 405
 * the path documents), the status is documented for the route, and the body matches the
 * schema of that status. `uncovered()` lists the documented answers never seen.
 */
export function openApiContract(doc: OpenApiDoc) {
  const local = (value: unknown) => JSON.parse(JSON.stringify(value).replaceAll('"#/components/schemas/', '"doc#/$defs/'));
  const validating = (options: { strictRequired: boolean }) => {
    const ajv = new Ajv2020({ allErrors: true, strict: true, ...options });
    // OpenAPI's own annotation keyword beside JSON Schema's.
    ajv.addKeyword('example');
    ajv.addSchema({ $id: 'doc', $defs: local(doc.components.schemas) });
    const validators = new Map<unknown, ValidateFunction>();
    return (schema: unknown) => {
      let validate = validators.get(schema);
      if (!validate) validators.set(schema, (validate = ajv.compile(local(schema))));
      return validate;
    };
  };
  const validatorOf = validating({ strictRequired: true });
  // A request body says "costCents, or model and usage" as oneOf [{ required: [costCents] }, { required: [model, usage] }]:
  // JSON Schema's idiom, whose branches name properties defined beside them (which strictRequired flags).
  const requestValidatorOf = validating({ strictRequired: false });
  const templates = Object.keys(doc.paths).map((path) => ({
    path,
    pattern: new RegExp(`^${path.replace(/\{[^}]+\}/g, '[^/]+')}$`),
  }));
  const seen = new Set<string>();
  const operationOf = (method: string, path: string): Operation | undefined => {
    const pathname = new URL(path, 'http://x').pathname;
    const template = templates.find((t) => t.pattern.test(pathname));
    return template ? doc.paths[template.path]?.[method.toLowerCase()] : undefined;
  };

  return {
    /** Checks one answer to `method path` against the document. */
    check(method: string, path: string, res: Reply): void {
      const what = `${method} ${path} -> ${res.status} ${res.text.slice(0, 300)}`;
      const pathname = new URL(path, 'http://x').pathname;
      const template = templates.find((t) => t.pattern.test(pathname));
      expect(template, `${what}: the path is documented`).toBeDefined();
      const ops = doc.paths[(template as { path: string }).path] as Record<string, Operation>;
      const op = ops[method.toLowerCase()];
      let documented: Operation['responses'][string] | undefined;
      if (op) {
        documented = op.responses[String(res.status)];
        seen.add(`${method.toLowerCase()} ${template?.path} ${res.status}`);
      } else {
        // A method the path does not take: the 405 its operations document, naming the ones it takes.
        expect(res.status, what).toBe(405);
        const allowed = Object.keys(ops).flatMap((m) => (m === 'get' ? ['GET', 'HEAD'] : [m.toUpperCase()]));
        expect(res.headers.allow?.split(', ').sort(), what).toEqual(allowed.sort());
        documented = Object.values(ops)[0]?.responses['405'];
        seen.add(`405 ${template?.path}`);
      }
      expect(documented, `${what}: the status is documented for the route`).toBeDefined();
      const content = documented?.content ?? {};
      const json = content['application/json'];
      if (json) {
        expect(res.headers['content-type'], what).toMatch(/^application\/json/);
        const validate = validatorOf(json.schema);
        const valid = validate(res.body);
        expect(valid ? [] : validate.errors, `${what}: the body matches the documented schema`).toEqual([]);
      } else {
        expect(Object.keys(content), what).toEqual(['text/plain']);
        expect(res.headers['content-type'], what).toMatch(/^text\/plain/);
      }
    },
    /**
     * Whether a JSON body is one the document lets a client send to `method path`: valid
     * against the schema of its request body (a generated client's check before sending).
     */
    acceptsBody(method: string, path: string, body: unknown): { valid: boolean; errors: unknown } {
      const op = operationOf(method, path);
      const schema = (op?.requestBody as { content?: Record<string, { schema: unknown }> } | undefined)?.content?.['application/json']?.schema;
      expect(schema, `${method} ${path} documents a JSON request body`).toBeDefined();
      const validate = requestValidatorOf(schema);
      const valid = validate(body);
      return { valid, errors: validate.errors };
    },
    /** The documented answers (route and status, or a path's 405) that no checked answer has shown. */
    uncovered(): string[] {
      const missing: string[] = [];
      for (const [path, ops] of Object.entries(doc.paths)) {
        for (const [method, op] of Object.entries(ops)) {
          for (const status of Object.keys(op.responses)) {
            const key = status === '405' ? `405 ${path}` : `${method} ${path} ${status}`;
            if (!seen.has(key)) missing.push(key);
          }
        }
      }
      return [...new Set(missing)];
    },
  };
}
