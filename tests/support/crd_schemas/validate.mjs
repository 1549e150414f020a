// Checks custom resources against the schemas of their CustomResourceDefinitions.
//
// The models of @kubernetes-models/keda and @kubernetes-models/prometheus-operator are generated
// from the projects' published CRDs (their openAPIV3Schema: types, required fields, enums,
// patterns); `validate()` runs that schema. Unknown fields are not reported: the generated
// schemas leave additional properties open, as the API server's pruning would drop them.
//
// stdin: a JSON array of objects. stdout: a JSON array, for each object in order,
// {"kind", "name", "error"} with error null when it is valid.
import { readFileSync } from "node:fs";

const MODEL_PACKAGES = {
  "keda.sh": "@kubernetes-models/keda/keda.sh",
  "monitoring.coreos.com": "@kubernetes-models/prometheus-operator/monitoring.coreos.com",
};

async function problem(object) {
  const [group, version] = String(object.apiVersion).split("/");
  const prefix = MODEL_PACKAGES[group];
  if (!prefix || !version) return `no CRD schema known for apiVersion ${object.apiVersion}`;
  let models;
  try {
    models = await import(`${prefix}/${version}`);
  } catch {
    return `no CRD schema known for apiVersion ${object.apiVersion}`;
  }
  const Model = models[object.kind];
  if (!Model) return `no CRD schema known for ${object.kind} in ${object.apiVersion}`;
  try {
    new Model(object).validate();
    return null;
  } catch (error) {
    return String(error.message);
  }
}

const objects = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const object of objects) {
  results.push({
    kind: object.kind,
    name: object.metadata?.name ?? null,
    error: await problem(object),
  });
}
process.stdout.write(JSON.stringify(results));
