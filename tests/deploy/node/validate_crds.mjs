// Validates custom resources (Istio, prometheus-operator, KEDA) against the schemas that the npm
// packages @kubernetes-models/istio, @kubernetes-models/prometheus-operator and
// @kubernetes-models/keda ship. Those packages ship no JSON Schema files: each kind's schema
// comes compiled into a standalone Ajv validator (`_schemas/<Name>.js`), which this script runs.
//
// The compiled schemas do not forbid unknown fields (the API server prunes them silently), so
// a typo such as `requestPrincipal:` would pass. To be strict, every object handed to a
// validator is wrapped in a Proxy that records which keys the validator looked up: a key that
// is present but was never looked up in an object whose other keys were is not in the schema.
// Objects the validator never looks into (free-form, x-kubernetes-preserve-unknown-fields) are
// left alone.
//
// Usage: node validate_crds.mjs MODELS_DIR < {"documents": [...]}   (prints a JSON report)
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const PACKAGES = {
  "networking.istio.io": "@kubernetes-models/istio",
  "security.istio.io": "@kubernetes-models/istio",
  "telemetry.istio.io": "@kubernetes-models/istio",
  "extensions.istio.io": "@kubernetes-models/istio",
  "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
  "keda.sh": "@kubernetes-models/keda",
};

async function validatorFor(modelsDir, apiVersion, kind) {
  const [group, version] = apiVersion.split("/");
  const pkg = PACKAGES[group];
  if (!pkg || !version) return null;
  const modelFile = join(modelsDir, "node_modules", pkg, group, version, `${kind}.js`);
  let source;
  try {
    source = readFileSync(modelFile, "utf8");
  } catch {
    return null;
  }
  const match = source.match(/_schemas\/(\w+)\.js/);
  if (!match) return null;
  const schemaFile = join(modelsDir, "node_modules", pkg, "_schemas", `${match[1]}.js`);
  return (await import(pathToFileURL(schemaFile).href)).validate;
}

// Wraps `value` so that every key lookup on every nested object is recorded in `seen`.
function tracked(value, path, seen) {
  if (value === null || typeof value !== "object") return value;
  if (Array.isArray(value)) {
    return value.map((item, index) => tracked(item, `${path}/${index}`, seen));
  }
  const keys = new Set();
  seen.push({ path, value, keys });
  const children = {};
  for (const [key, child] of Object.entries(value)) {
    children[key] = tracked(child, `${path}/${key}`, seen);
  }
  const note = (key) => {
    if (typeof key === "string") keys.add(key);
  };
  return new Proxy(children, {
    get(target, key, receiver) {
      note(key);
      return Reflect.get(target, key, receiver);
    },
    has(target, key) {
      note(key);
      return Reflect.has(target, key);
    },
    getOwnPropertyDescriptor(target, key) {
      note(key);
      return Reflect.getOwnPropertyDescriptor(target, key);
    },
  });
}

function unknownFields(seen) {
  const errors = [];
  for (const { path, value, keys } of seen) {
    if (keys.size === 0) continue; // free-form object: the schema does not describe its keys
    for (const key of Object.keys(value)) {
      if (!keys.has(key)) errors.push(`${path || "/"}: unknown field "${key}"`);
    }
  }
  return errors;
}

const modelsDir = process.argv[2];
const input = JSON.parse(readFileSync(0, "utf8"));
const report = [];
for (const doc of input.documents) {
  const name = `${doc.kind}/${doc.metadata?.name ?? "?"}`;
  const validate = await validatorFor(modelsDir, doc.apiVersion ?? "", doc.kind ?? "");
  if (!validate) {
    report.push({ name, errors: [`no schema for ${doc.apiVersion} ${doc.kind}`] });
    continue;
  }
  const seen = [];
  const valid = validate(tracked(doc, "", seen));
  const errors = valid
    ? []
    : validate.errors.map((e) => `${e.instancePath || "/"}: ${e.message} ${JSON.stringify(e.params)}`);
  errors.push(...unknownFields(seen));
  report.push({ name, errors });
}
process.stdout.write(JSON.stringify(report));
