// Validates Istio and Prometheus-operator resources against their published CRD schemas,
// as compiled into the pinned npm packages @kubernetes-models/istio and
// @kubernetes-models/prometheus-operator (tests/node/package.json).
// Input (stdin): a JSON array of resources. Output: one line per resource, "ok KIND NAME"
// or "invalid KIND NAME: errors"; exit status 1 when any is invalid or of an unknown kind.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const modules = process.env.MCPGW_NODE_MODULES;
if (!modules) {
  console.error("MCPGW_NODE_MODULES is not set");
  process.exit(2);
}
const models = {
  "extensions.istio.io/v1alpha1/WasmPlugin": "@kubernetes-models/istio/extensions.istio.io/v1alpha1/WasmPlugin.js",
  "networking.istio.io/v1alpha3/EnvoyFilter": "@kubernetes-models/istio/networking.istio.io/v1alpha3/EnvoyFilter.js",
  "security.istio.io/v1/PeerAuthentication": "@kubernetes-models/istio/security.istio.io/v1/PeerAuthentication.js",
  "security.istio.io/v1/AuthorizationPolicy": "@kubernetes-models/istio/security.istio.io/v1/AuthorizationPolicy.js",
  "monitoring.coreos.com/v1/ServiceMonitor": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor.js",
};
const docs = JSON.parse(readFileSync(0, "utf8"));
let failed = false;
for (const doc of docs) {
  const key = `${doc.apiVersion}/${doc.kind}`;
  const name = doc.metadata?.name ?? "?";
  const file = models[key];
  if (!file) {
    console.log(`invalid ${key} ${name}: no schema for this kind`);
    failed = true;
    continue;
  }
  const mod = await import(pathToFileURL(join(modules, file)).href);
  const Model = mod[doc.kind];
  try {
    new Model(doc).validate();
    console.log(`ok ${key} ${name}`);
  } catch (e) {
    console.log(`invalid ${key} ${name}: ${e.message}`);
    failed = true;
  }
}
process.exit(failed ? 1 : 0);
