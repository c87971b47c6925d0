/**
 * The dashboard view: live server figures from `Hub.WatchStats` (one `Stats` a second) over
 * gRPC-Web on the page's own origin, each drawn as a small SVG line chart of the last
 * {@link WINDOW} ticks with its current value. The stream runs only while the view is shown;
 * a failed stream is retried with backoff. With a token in the chat form, it is sent as a
 * bearer token (the server needs a valid one when auth is on).
 */
import { createClient, ConnectError } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { Hub, type Stats } from "./gen/duplex/v1/hub_pb.js";
import { byId, element } from "./dom.js";

/** Ticks kept per chart (one a second). */
const WINDOW = 60;
const SVG = "http://www.w3.org/2000/svg";
const CHART_WIDTH = 120;
const CHART_HEIGHT = 40;

/** One chart: what it shows and how to read it from a tick. */
interface Metric {
  key: string;
  label: string;
  read(stats: Stats): number;
  format(value: number): string;
}

const count = (value: number): string => value.toFixed(0);
const rate = (value: number): string => `${value < 10 ? value.toFixed(1) : value.toFixed(0)}/s`;

const METRICS: Metric[] = [
  { key: "sessions", label: "Sessions", read: (s) => Number(s.sessions), format: count },
  { key: "rooms", label: "Rooms", read: (s) => Number(s.rooms), format: count },
  { key: "connections", label: "Connections", read: (s) => Number(s.connections), format: count },
  { key: "messages-in", label: "Messages in", read: (s) => s.messagesInPerSecond, format: rate },
  { key: "messages-out", label: "Messages out", read: (s) => s.messagesOutPerSecond, format: rate },
  { key: "deliveries", label: "Deliveries", read: (s) => s.deliveriesPerSecond, format: rate },
  { key: "lagged", label: "Lagged subscribers (total)", read: (s) => Number(s.laggedSubscribersTotal), format: count },
  {
    key: "disconnected",
    label: "Disconnected subscribers (total)",
    read: (s) => Number(s.disconnectedSubscribersTotal),
    format: count,
  },
  {
    key: "publish-p99",
    label: "p99 publish → ack",
    read: (s) => s.publishAckP99Seconds * 1000,
    format: (ms) => `${ms < 10 ? ms.toFixed(2) : ms.toFixed(0)} ms`,
  },
];

/** A chart's elements and its recent values. */
interface Chart {
  metric: Metric;
  values: number[];
  value: HTMLElement;
  line: SVGPolylineElement;
}

function buildChart(metric: Metric): { figure: HTMLElement; chart: Chart } {
  const figure = element("figure", "");
  figure.dataset.metric = metric.key;
  const caption = element("figcaption", "");
  const label = element("span", "label", metric.label);
  const value = element("span", "value", "–");
  caption.append(label, value);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${CHART_WIDTH} ${CHART_HEIGHT}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `${metric.label}, last ${WINDOW} seconds`);
  const line = document.createElementNS(SVG, "polyline");
  svg.append(line);
  figure.append(caption, svg);
  return { figure, chart: { metric, values: [], value, line } };
}

function draw(chart: Chart, stats: Stats): void {
  const latest = chart.metric.read(stats);
  chart.values.push(latest);
  if (chart.values.length > WINDOW) chart.values.shift();
  chart.value.textContent = chart.metric.format(latest);
  chart.value.dataset.value = String(latest);
  const top = Math.max(...chart.values) || 1;
  const step = CHART_WIDTH / (WINDOW - 1);
  const start = WINDOW - chart.values.length;
  const points = chart.values.map((v, i) => {
    const x = (start + i) * step;
    const y = CHART_HEIGHT - 2 - (v / top) * (CHART_HEIGHT - 4);
    return `${x.toFixed(1)},${y.toFixed(1)}`;
  });
  chart.line.setAttribute("points", points.join(" "));
}

/** Starts and stops the stats stream as the view is shown and hidden. */
export class Dashboard {
  private readonly charts: Chart[] = [];
  private readonly status = byId("stats-status");
  private readonly hub = createClient(Hub, createGrpcWebTransport({ baseUrl: location.origin }));
  private running: AbortController | undefined;

  constructor() {
    const container = byId("charts");
    for (const metric of METRICS) {
      const { figure, chart } = buildChart(metric);
      container.append(figure);
      this.charts.push(chart);
    }
  }

  /** Streams stats until {@link stop}. */
  start(token: string): void {
    if (this.running) return;
    const running = new AbortController();
    this.running = running;
    void this.run(running.signal, token);
  }

  stop(): void {
    this.running?.abort();
    this.running = undefined;
  }

  private async run(signal: AbortSignal, token: string): Promise<void> {
    const headers: Record<string, string> = token ? { authorization: `Bearer ${token}` } : {};
    let attempt = 0;
    while (!signal.aborted) {
      if (attempt === 0) this.status.textContent = "connecting…";
      try {
        for await (const stats of this.hub.watchStats({}, { signal, headers })) {
          attempt = 0;
          this.status.textContent = `live — updated ${new Date(Number(stats.timeUnixMicros / 1000n)).toLocaleTimeString()}`;
          for (const chart of this.charts) draw(chart, stats);
        }
        if (signal.aborted) return;
        this.status.textContent = "the server ended the stream";
      } catch (error) {
        if (signal.aborted) return;
        const reason = error instanceof ConnectError ? error.rawMessage || error.code.toString() : String(error);
        attempt += 1;
        const delay = Math.min(5000, 250 * 2 ** Math.min(attempt, 5));
        this.status.textContent = `stats unavailable (${reason}); retrying in ${delay} ms`;
        await new Promise((resolve) => setTimeout(resolve, delay));
        continue;
      }
      attempt += 1;
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
}
