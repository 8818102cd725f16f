# tandem's container image: a static binary on distroless, run as an
# unprivileged user, with no shell or package manager in the final image.
#
#   make image                       # tags tandem:$(git describe)
#   docker build -t tandem:dev .     # the same, without version labels
#
# The build arguments below only label the binary (`tandem version`,
# tandem_build_info); the image builds without them.

# Keep in step with the go directive in go.mod (a test checks).
ARG GO_VERSION=1.26.8

FROM golang:${GO_VERSION} AS build
WORKDIR /src
# Modules first, so a source change does not download them again.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=devel
ARG COMMIT=unknown
ARG DATE=unknown
# CGO_ENABLED=0: a static binary that needs no libc in the final image.
# -buildvcs=false: .git is not in the build context (.dockerignore); the
# commit comes from the COMMIT argument instead.
RUN CGO_ENABLED=0 go build -trimpath -buildvcs=false \
      -ldflags "-s -w \
        -X github.com/tandem-migrate/tandem/internal/version.version=${VERSION} \
        -X github.com/tandem-migrate/tandem/internal/version.commit=${COMMIT} \
        -X github.com/tandem-migrate/tandem/internal/version.date=${DATE}" \
      -o /out/tandem ./cmd/tandem

# distroless/static: CA certificates (for sslmode=verify-full), tzdata and
# /etc/passwd entries, nothing else.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/tandem /usr/local/bin/tandem
# 65532 is distroless's "nonroot"; numeric, so Kubernetes' runAsNonRoot
# can verify it.
USER 65532:65532
# metrics.listen: /metrics, /healthz, /backfill.
EXPOSE 9187
ENTRYPOINT ["/usr/local/bin/tandem"]
CMD ["run", "--config", "/etc/tandem/tandem.yaml"]
