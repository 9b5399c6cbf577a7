// Validates prometheus-operator objects against its published schemas
// (@kubernetes-models/prometheus-operator): every YAML document in the files named on the command
// line must be a monitoring.coreos.com/v1 kind this script knows, and must pass. Prints one line a
// document; exits 1 if any failed (after listing every failure). kubernetes-validate only warns
// about such kinds, hence this script.
import { readFileSync } from 'node:fs';
import yaml from 'js-yaml';
import * as monitoringV1 from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1';

const kinds = { 'monitoring.coreos.com/v1': monitoringV1 };

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error('usage: node validate.mjs FILE...');
  process.exit(2);
}
let failures = 0;
for (const file of files) {
  let docs;
  try {
    docs = yaml.loadAll(readFileSync(file, 'utf8')).filter((d) => d !== null);
  } catch (e) {
    console.error(`FAIL ${file}: not YAML: ${e.message}`);
    failures++;
    continue;
  }
  if (docs.length === 0) {
    console.error(`FAIL ${file}: no document`);
    failures++;
  }
  for (const doc of docs) {
    const what = `${file} ${doc?.apiVersion}/${doc?.kind} ${doc?.metadata?.name}`;
    const Model = kinds[doc?.apiVersion]?.[doc?.kind];
    if (!Model) {
      console.error(`FAIL ${what}: not a prometheus-operator kind this validator knows`);
      failures++;
      continue;
    }
    try {
      new Model(doc).validate();
      console.log(`ok ${what}`);
    } catch (e) {
      console.error(`FAIL ${what}: ${e.message}`);
      failures++;
    }
  }
}
process.exit(failures === 0 ? 0 : 1);
